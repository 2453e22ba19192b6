"""The speed spec beyond peftlab-vs-peft training: inference cases, ``compare`` (peftlab beside other
peftlab methods), ``reference: hf-stock``, ``attention_hook``, GPT-2 shapes and mixed-task batches.
Each new field is refused where it means nothing, with the field named; a tiny spec of every kind
runs end to end through the CLI and writes its JSON and Markdown. Timings here are meaningless
(tiny models, busy CPU): the assertions are about what was built, run, compared and written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.lab.cli import main
from peftlab.lab.speed import run_speed
from peftlab.lab.speed.spec import load_spec
from speed_helpers import QUICK, TINY_GPT2, TINY_T5, tiny_llama

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[2]

HEAD = QUICK + """model: """ + TINY_T5 + """
batch: {size: 4, source: 8, target: 4, tasks: 2}
"""
LLAMA, GPT2 = tiny_llama(), TINY_GPT2
GPT2_LORA = """
    methods: [{name: lora, r: 4, alpha: 8, targets: [c_attn]}]
    peft: {peft_type: LORA, task_type: CAUSAL_LM, r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: [c_attn],
           fan_in_fan_out: true}"""

KINDS = HEAD + f"""
cases:
  - name: drop
    kind: inference
    methods: [{{name: houlsby, drop_lowest: 0}}]
    reference: hf-stock
    compare: {{drop1: [{{name: houlsby, drop_lowest: 1}}]}}
    inference: {{new_tokens: 2, rows: 2}}
  - name: hyper
    methods: [{{name: hyperformer, tasks: 2, train_norms: false}}]
    reference: none
    compare: {{houlsby: [{{name: houlsby, reduction_factor: 32, ln_after: true}}]}}
  - name: lora-inference
    kind: inference
    model: {LLAMA}
    batch: {{size: 2, source: 10}}
    methods: [{{name: lora, r: 4, alpha: 8, targets: [q, v]}}]
    peft: {{peft_type: LORA, task_type: CAUSAL_LM, r: 4, lora_alpha: 8, lora_dropout: 0.0,
           target_modules: [q_proj, v_proj]}}
    inference: {{prompt: 4, new_tokens: 3}}
  - name: hook
    kind: inference
    model: {LLAMA}
    batch: {{size: 2, source: 10}}
    methods: [{{name: zero_shot}}]
    reference: hf-stock
    attention_hook: true
    inference: {{prompt: 4, new_tokens: 3}}
  - name: gpt2-lora
    model: {GPT2}
    batch: {{size: 2, source: 8}}{GPT2_LORA}
    compile_reference: false
  - name: gpt2-lora-forward
    kind: inference
    model: {GPT2}
    batch: {{size: 2, source: 8}}{GPT2_LORA}
    reps: 3
    inference: {{new_tokens: 0}}
"""


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    """The tiny spec of every new kind, run once through the CLI: (its rows by key, its Markdown)."""
    tmp = tmp_path_factory.mktemp("kinds")
    spec = tmp / "kinds.yaml"
    spec.write_text(KINDS)
    out = tmp / "kinds.json"
    assert main(["speed", str(spec), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["versions"]["peftlab"] and "speed" in result["command"]
    rows = {(r["case"], r.get("phase"), r["impl"]): r for r in result["rows"]}
    return rows, out.with_suffix(".md").read_text()


def test_every_kind_runs_and_times_each_implementation(kinds_run):
    rows, _ = kinds_run
    assert set(rows) == {
        *((("drop", phase, impl) for phase in ("forward", "generate")
           for impl in ("peftlab", "peftlab:drop1", "hf-stock"))),
        ("hyper", None, "peftlab"), ("hyper", None, "peftlab:houlsby"),
        *((("lora-inference", phase, impl) for phase in ("forward", "generate") for impl in ("peftlab", "peft"))),
        *((("hook", phase, impl) for phase in ("forward", "generate") for impl in ("peftlab", "hf-stock"))),
        ("gpt2-lora", None, "peftlab"), ("gpt2-lora", None, "peft"),
        ("gpt2-lora-forward", "forward", "peftlab"), ("gpt2-lora-forward", "forward", "peft")}
    for key, r in rows.items():
        assert r["error"] is None and r["tokens_per_s"] > 0, key
        times = r["seconds_all"] if r.get("kind") == "inference" else r["step_s_all"]
        assert len(times) == (3 if key[0] == "gpt2-lora-forward" else 2), key  # a case's own reps
    # tokens/s counts the batch's tokens (forward) or the generated ones (rows x new tokens)
    assert rows[("drop", "forward", "peftlab")]["tokens_per_call"] == 4 * (8 + 4)
    assert rows[("drop", "generate", "peftlab")]["tokens_per_call"] == 2 * 2
    assert rows[("lora-inference", "generate", "peft")]["tokens_per_call"] == 2 * 3


def test_inference_implementations_of_one_method_compute_one_function(kinds_run):
    """peftlab's adapter copied into peft's (and the hook with nothing attached is the stock model):
    the same forward loss, the same generated tokens."""
    rows, _ = kinds_run
    for case, ref in (("lora-inference", "peft"), ("hook", "hf-stock")):
        ours, theirs = rows[(case, "forward", "peftlab")], rows[(case, "forward", ref)]
        assert ours["init_loss"] == pytest.approx(theirs["init_loss"], rel=1e-5), case
        assert rows[(case, "generate", ref)]["same_tokens"] == 1.0, case
    assert rows[("lora-inference", "forward", "peft")]["adapters_copied"] == 8  # q, v in 2 layers x (A, B)
    assert rows[("hook", "forward", "peftlab")]["trainable_params"] == 0


def test_compare_rows_are_timed_beside_peftlab_and_against_it(kinds_run):
    rows, md = kinds_run
    for phase in ("forward", "generate"):
        ours, drop1 = rows[("drop", phase, "peftlab")], rows[("drop", phase, "peftlab:drop1")]
        assert drop1["trainable_params"] == ours["trainable_params"] // 2  # 1 of 2 blocks a stack
        assert drop1["vs_peftlab"] == pytest.approx(drop1["tokens_per_s"] / ours["tokens_per_s"])
        assert "vs_reference" in drop1 and "vs_reference" in ours  # both against the untouched model
        assert "vs_peftlab" not in ours
    # task_ids reach HyperFormer++ (a mixed-task batch) and not the Houlsby adapters beside it
    assert rows[("hyper", None, "peftlab:houlsby")]["vs_peftlab"] > 0
    assert "| drop (generate) | fp32 | peftlab:drop1 |" in md and "× peftlab" in md
    assert "| hyper | fp32 | peftlab:houlsby |" in md


def test_gpt2_lora_matches_peft_fan_in_fan_out(kinds_run):
    """model.family: gpt2 — LoRA on the Conv1D c_attn, peft's with fan_in_fan_out: same count, the
    adapters copied (A, B in 2 layers), the same loss before training and in the forward pass."""
    rows, md = kinds_run
    ours, theirs = rows[("gpt2-lora", None, "peftlab")], rows[("gpt2-lora", None, "peft")]
    assert ours["trainable_params"] == theirs["trainable_params"] == 2 * 4 * (32 + 96)
    assert theirs["adapters_copied"] == 4
    assert ours["init_loss"] == pytest.approx(theirs["init_loss"], rel=1e-5)
    assert rows[("gpt2-lora-forward", "forward", "peftlab")]["init_loss"] == pytest.approx(
        rows[("gpt2-lora-forward", "forward", "peft")]["init_loss"], rel=1e-5)
    assert "| gpt2-lora-forward (forward) | fp32 | peft |" in md


def test_an_inference_implementation_has_its_peak_memory_measured(tmp_path):
    from peftlab.lab.speed.memory import in_subprocess

    spec = tmp_path / "kinds.yaml"
    spec.write_text(KINDS)
    mem = in_subprocess({"spec": str(spec), "case": "drop", "precision": "fp32", "impl": "peftlab:drop1", "threads": 1})
    assert mem["kind"] == "cpu_peak_rss" and mem["peak_bytes"] >= mem["rss_built_bytes"] > 0


def test_the_new_fields_build_on_meta(tmp_path):
    spec = tmp_path / "kinds.yaml"
    spec.write_text(KINDS)
    rows = {(r["case"], r["impl"]): r for r in run_speed(spec, dry_run=True, log=lambda line: None)["rows"]}
    assert rows[("drop", "hf-stock")]["trainable_params"] == 0  # no count check against the untouched model
    assert rows[("hyper", "peftlab:houlsby")]["trainable_params"] < rows[("hyper", "peftlab")]["trainable_params"]
    assert rows[("gpt2-lora", "peft")]["trainable_params"] == rows[("gpt2-lora", "peftlab")]["trainable_params"]


def test_a_mixed_task_batch_gives_task_ids_only_to_methods_that_read_them():
    from peftlab.lab.speed.build import batch_for, make_batch
    from peftlab.lab.speed.spec import BatchShape
    from peftlab.methods.houlsby import HoulsbyConfig
    from peftlab.methods.hyperformer import HyperFormerConfig
    from transformers import T5Config

    batch = make_batch(BatchShape(size=5, source=3, target=2, tasks=2), T5Config(vocab_size=20), torch.device("cpu"))
    assert batch["task_ids"].tolist() == [0, 1, 0, 1, 0]
    assert "task_ids" in batch_for(batch, [HyperFormerConfig(tasks=2)])
    assert set(batch_for(batch, [HoulsbyConfig()])) == {"input_ids", "attention_mask", "labels"}


def test_the_timing_loop_interleaves_in_alternating_order():
    from peftlab.lab.speed.timing import interleave, summary

    order = []
    times = interleave({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, torch.device("cpu"))
    assert order == ["a", "b", "b", "a", "a", "b"] and all(len(t) == 3 for t in times.values())
    stats = summary([3.0, 1.0, 2.0], "seconds")
    assert stats["seconds_median"] == 2.0 and stats["seconds_all"] == [3.0, 1.0, 2.0]


BAD_CASES = [
    ("{name: a, methods: [{name: lora}], reference: hf-stock}", r"cases\.0\.reference: hf-stock"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: hf}", r"cases\.0\.reference: an inference case"),
    ("{name: a, kind: inference, reference: hf-stock}", r"cases\.0\.methods: an inference case needs"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: none, variants: {x: {compile: true}}}",
     r"cases\.0\.variants: TrainSpec options"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: none, train: {compile: true}}",
     r"cases\.0\.train: TrainSpec options"),
    ("{name: a, kind: generate, compare: {b: [{name: lora}]}}", r"cases\.0\.compare: a generate case"),
    ("{name: a, methods: [{name: lora}], reference: none, compare: {'b c': [{name: lora}]}}",
     r"cases\.0\.compare: 'b c'"),
    ("{name: a, methods: [{name: lora}], reference: none, compare: {b: []}}", r"cases\.0\.compare: b: name at least"),
    ("{name: a, methods: [{name: lora}], reference: none, compare: {b: [{name: lroa}]}}",
     r"cases\.0\.compare\.b\.0\.name.*did you mean 'lora'"),
    ("{name: a, methods: [{name: lora}], reference: none, inference: {new_tokens: 4}}",
     r"cases\.0\.inference: only an inference case"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: none, inference: {new_tokens: -1}}",
     r"cases\.0\.inference\.new_tokens: must be >= 0"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: none, inference: {rows: 9}}",
     r"cases: a: inference\.rows 9 > batch\.size 2"),
    ("{name: a, kind: inference, methods: [{name: lora}], reference: none, inference: {prompt: 13}}",
     r"cases: a: inference\.prompt 13 > the batch's 12 tokens"),
    ("{name: a, methods: [{name: lora}], reference: none, reps: 0}", r"cases\.0\.reps: must be >= 1"),
    ("{name: a, methods: [{name: lora}], reference: none, batch: {tasks: -1}}",
     r"cases\.0\.batch\.tasks: must be >= 0"),
    ("{name: a, methods: [{name: lora}], reference: none, model: {family: gpt3}}",
     r"cases\.0\.model\.family: expected one of .*gpt2"),
]


@pytest.mark.parametrize("case, match", BAD_CASES, ids=[m.split(":")[0].replace("\\", "") + f"-{i}"
                                                        for i, (_, m) in enumerate(BAD_CASES)])
def test_a_misplaced_or_bad_new_field_fails_naming_it(tmp_path, case, match):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {{family: t5}}\nbatch: {{size: 2, source: 8, target: 4}}\ncases: [{case}]\n")
    with pytest.raises(ConfigError, match=match):
        load_spec(path)
