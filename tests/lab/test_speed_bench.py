"""The speed benchmark (``peftlab speed``): specs check out, every shipped spec builds on ``meta``,
a tiny spec runs end to end through the CLI and writes its results, bad specs fail in one line.
Timings here are meaningless (tiny models, busy CPU); the benchmark's numbers come from the
commands in the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftlab.lab.cli import main
from peftlab.errors import ConfigError, ModelError
from peftlab.lab.speed import run_speed
from peftlab.lab.speed.spec import load_spec
from speed_helpers import QUICK, TINY_T5, tiny_llama

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "benchmarks" / "speed").glob("*.yaml"))

TINY = QUICK + """model: """ + TINY_T5 + """
batch: {size: 2, source: 8, target: 4}
cases:
  - name: lora
    methods: [{name: lora, r: 4, alpha: 8, targets: [q, v]}]
    peft: {peft_type: LORA, task_type: SEQ_2_SEQ_LM, r: 4, lora_alpha: 8, lora_dropout: 0.0, target_modules: [q, v]}
    compile_reference: false
    train: {loss_chunk: 3}
    variants:
      plain: {fused_kernels: false}
  - name: full
    methods: [{name: full}]
    reference: hf
    compile_reference: false
  - name: llama-lora
    model: """ + tiny_llama() + """
    batch: {size: 2, source: 6, target: 2}  # a 6-token prompt (labels -100), then 2 answer tokens
    methods: [{name: lora, r: 4, alpha: 8, targets: [q, v]}]
    peft: {peft_type: LORA, task_type: CAUSAL_LM, r: 4, lora_alpha: 8, lora_dropout: 0.0,
           target_modules: [q_proj, v_proj]}
    compile_reference: false
"""


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


# The H100 anchors' trainable counts (shared/anchors/peft_h100.jsonl), to be reproduced on meta.
ANCHOR_COUNTS = {("gpu-t5-base", "lora-r32-qv"): 3_538_944, ("gpu-t5-base", "lora-r50-qv"): 5_529_600,
                 ("gpu-t5-base", "full"): 222_903_552, ("gpu-llama-7b", "lora-r8-qv-512"): 4_194_304}


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_builds_on_meta(spec):
    """GPU specs included: peftlab and peft must train exactly the same parameter count (a mismatch
    raises), and the anchors' counts come out."""
    result = run_speed(spec, dry_run=True, log=lambda line: None)
    assert result["rows"]
    for row in result["rows"]:
        expected = ANCHOR_COUNTS.get((spec.stem, row["case"]))
        if expected is not None:
            assert row["trainable_params"] == expected, row


def test_every_shipped_spec_opens_with_its_command():
    """The header comment gives the command that runs the spec (and the specs that took over the
    removed stand-alone scripts are all shipped, so the test above builds each on meta)."""
    assert {"mini-t5-adapterdrop", "mini-t5-ia3", "mini-t5-prompts", "mini-t5-multitask", "mini-llama-attention",
            "gpt2-small-lora"} <= {p.stem for p in SPECS}
    for spec in SPECS:
        header = "\n".join(line for line in spec.read_text().splitlines() if line.startswith("#"))
        assert f"peftlab speed benchmarks/speed/{spec.name}" in header, spec.name


def test_the_adapterdrop_spec_builds_what_the_committed_record_measured():
    """benchmarks/results/adapterdrop-speed-cpu.json (made by the script this spec replaced): the
    same drop_lowest values with the same trainable counts on mini-t5."""
    record = json.loads((ROOT / "benchmarks" / "results" / "adapterdrop-speed-cpu.json").read_text())
    expected = {("peftlab" if r["drop_lowest"] == 0 else f"peftlab:drop{r['drop_lowest']}"): r["trainable_params"]
                for r in record["results"] if r["drop_lowest"] is not None}
    result = run_speed(ROOT / "benchmarks" / "speed" / "mini-t5-adapterdrop.yaml", dry_run=True,
                       cases=["houlsby-drop"], log=lambda line: None)
    assert {r["impl"]: r["trainable_params"] for r in result["rows"] if r["impl"] != "hf-stock"} == expected


def test_tiny_spec_runs_end_to_end(tiny_spec, tmp_path):
    out = tmp_path / "res.json"
    assert main(["speed", str(tiny_spec), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".md").exists()
    m = result["machine"]
    assert m["device"] == "cpu" and m["cpu"]["torch_capability"] and "peft" in m["versions"]
    assert "speed" in result["command"]
    rows = {(r["case"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {("lora", "peftlab"), ("lora", "peftlab[plain]"), ("lora", "peft"),
                         ("full", "peftlab"), ("full", "hf"), ("llama-lora", "peftlab"), ("llama-lora", "peft")}
    for r in rows.values():
        assert r["error"] is None and len(r["step_s_all"]) == 2 and r["tokens_per_s"] > 0
    # the same weights on both sides: LoRA's B made nonzero and copied, so the losses agree
    for case in ("lora", "llama-lora", "full"):
        ref = rows[(case, "hf" if case == "full" else "peft")]
        assert rows[(case, "peftlab")]["init_loss"] == pytest.approx(ref["init_loss"], rel=1e-5)
    assert rows[("lora", "peft")]["adapters_copied"] == 24  # q, v in 6 attentions (2 enc, 2+2 dec) x (A, B)
    assert rows[("lora", "peftlab")]["trainable_params"] == rows[("lora", "peft")]["trainable_params"] == 3072
    assert rows[("lora", "peftlab")]["vs_reference"] > 0
    assert rows[("lora", "peftlab")]["tokens_per_step"] == 2 * (8 + 4)
    assert rows[("llama-lora", "peftlab")]["tokens_per_step"] == 2 * (6 + 2)


def test_a_decoder_batch_with_a_target_labels_only_the_answer():
    from transformers import LlamaConfig

    from peftlab.lab.speed.build import make_batch
    from peftlab.lab.speed.spec import BatchShape

    config = LlamaConfig(vocab_size=50)
    batch = make_batch(BatchShape(size=3, source=5, target=2), config, torch.device("cpu"))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 7)
    assert (batch["labels"][:, :5] == -100).all()
    assert torch.equal(batch["labels"][:, 5:], batch["input_ids"][:, 5:])
    whole = make_batch(BatchShape(size=3, source=5), config, torch.device("cpu"))
    assert torch.equal(whole["labels"], whole["input_ids"])  # target 0: every position predicted


def test_peak_memory_comes_from_a_fresh_process(tiny_spec):
    from peftlab.lab.speed.memory import in_subprocess

    mem = in_subprocess({"spec": str(tiny_spec), "case": "lora", "precision": "fp32", "impl": "peft", "threads": 1})
    assert mem["kind"] == "cpu_peak_rss" and mem["peak_bytes"] >= mem["rss_built_bytes"] >= mem["rss_start_bytes"] > 0


def _generate_rows(tmp_path, model: str, case: str) -> dict:
    """A one-case generate spec on ``model`` run on one thread: its rows by implementation."""
    spec = tmp_path / "gen.yaml"
    spec.write_text(f"""
device: cpu
threads: 1
reps: 1
model: {{name: {model}}}
cases:
  - name: gen
    kind: generate
{case}""")
    result = run_speed(spec, out=tmp_path / "gen.json", log=lambda line: None)
    return {r["impl"]: r for r in result["rows"]}


def test_generate_case_runs(tmp_path):
    rows = _generate_rows(tmp_path, "mini-t5", """    methods: [{name: lora, r: 4, alpha: 8, targets: [q, v]}]
    generate: {examples: 4, batch_size: 2, max_new_tokens: 4, max_source_length: 64}
""")
    assert set(rows) == {"loop", "batched", "lora unmerged", "lora merged"}
    assert rows["batched"]["vs_loop"] > 0 and rows["lora merged"]["vs_base_batched"] > 0
    assert rows["batched"]["agreement"] is not None and rows["lora merged"]["agreement"] is not None
    assert "| gen | fp32 | loop |" in (tmp_path / "gen.md").read_text()


def test_generate_case_on_a_decoder_encodes_the_loop_as_peftlab_does(tmp_path):
    """A decoder's prompts start with BOS and do not end with EOS in both implementations (a loop fed
    encoder-style prompts answered something else), so in fp32 batching changes no output."""
    rows = _generate_rows(tmp_path, "mini-llama", """    generate: {examples: 4, batch_size: 2, max_new_tokens: 6, max_source_length: 64}
""")
    assert set(rows) == {"loop", "batched"}
    assert rows["batched"]["agreement"] == 1.0
    assert rows["loop"]["new_tokens_per_s"] > 0


@pytest.mark.parametrize(
    "text, match",
    [
        ("cases: [{name: a, methods: [{name: lora}], peft: {peft_type: LORA}}]\nrepz: 3\n", r"repz: unknown key"),
        ("model: {family: t5}\ncases: [{name: a, methods: [{name: lora}]}]\n", r"cases.0.*peft.*equivalent peft config"),
        ("cases: [{name: a, methods: [{name: lora}], reference: none}]\n", r"has no model"),
        ("model: {family: t5}\ncases: [{name: a, methods: [{name: loar}], reference: none}]\n", r"did you mean 'lora'"),
        ("model: {family: t5, name: mini-t5}\ncases: [{name: a, methods: [{name: lora}], reference: none}]\n",
         r"exactly one of model.name"),
        ("model: {family: t5}\ncases: [{name: a, methods: [{name: lora}], reference: none, train: {compile: maybe}}]\n",
         r"compile: expected true or false"),
    ],
)
def test_bad_specs_fail_with_the_field(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


def test_mismatched_peft_config_is_caught_on_meta(tmp_path, capsys):
    path = tmp_path / "mismatch.yaml"
    path.write_text(TINY.replace("target_modules: [q, v]}", "target_modules: [q, k, v]}", 1))
    with pytest.raises(ModelError, match="peftlab trains 3,072 parameters but peft trains 4,608"):
        run_speed(path, dry_run=True, cases=["lora"], log=lambda line: None)
    assert main(["speed", str(path), "--dry-run", "--case", "nope"]) == 2
    assert "--case: nope not in" in capsys.readouterr().err


def test_import_peftlab_is_fast():
    """``import peftlab`` (and the CLI's module) under 1 s: heavy imports are lazy."""
    code = ("import time; t = time.perf_counter(); import peftlab, peftlab.lab.cli; "
            "import sys; print(time.perf_counter() - t, 'torch' in sys.modules)")
    best = None
    for _ in range(3):  # the fastest of three: a loaded machine can stall one cold start (~0.02 s quiet)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        assert out[1] == "False"  # torch is never imported by peftlab's import
        best = min(float(out[0]), best if best is not None else float("inf"))
    assert best < 1.0


TINY_METHODS = """
device: cpu
threads: 1
precisions: [fp32]
warmup: 1
reps: 1
memory: false
model: """ + TINY_T5 + """
batch: {size: 2, source: 8, target: 4}
cases:
  - name: prompt
    methods: [{name: prompt_tuning, num_virtual_tokens: 3}]
    peft: {peft_type: PROMPT_TUNING, task_type: SEQ_2_SEQ_LM, num_virtual_tokens: 3, num_transformer_submodules: 1}
    compile_reference: false
  - name: ia3
    methods: [{name: ia3}]
    peft: {peft_type: IA3, task_type: SEQ_2_SEQ_LM, target_modules: [k, v, wo], feedforward_modules: [wo]}
    compile_reference: false
  - name: llama-adapter
    model: """ + tiny_llama(kv_heads=4) + """
    batch: {size: 2, source: 8}
    methods: [{name: llama_adapter, layers: 2, length: 3}]
    peft: {peft_type: ADAPTION_PROMPT, task_type: CAUSAL_LM, adapter_layers: 2, adapter_len: 3}
    variants: {own-loss: {loss_chunk: null}}
    count_differs: "per-head vs per-layer gates"
    compile_reference: false
"""


def test_every_method_case_starts_both_sides_from_the_same_weights(tmp_path):
    """Prompt tuning, IA3 and LLaMA-Adapter cases: peftlab's adapter tensors are copied into peft's
    (names and shapes through build.PEFT_NAMES; the per-head gates set equal for peft's one per
    layer), so the two compute the same loss before the first step."""
    spec = tmp_path / "methods.yaml"
    spec.write_text(TINY_METHODS)
    out = tmp_path / "res.json"
    assert main(["speed", str(spec), "--out", str(out)]) == 0
    rows = {(r["case"], r["impl"]): r for r in json.loads(out.read_text())["rows"]}
    # prompt: the soft prompt; IA3: k and v in 6 attentions (2 encoder, 2 + 2 decoder) + wo in 4 FFNs;
    # LLaMA-Adapter: a prompt and a gate in each of 2 layers
    expect_copied = {"prompt": 1, "ia3": 16, "llama-adapter": 4}
    for case, copied in expect_copied.items():
        ours, peft_row = rows[(case, "peftlab")], rows[(case, "peft")]
        assert ours["error"] is None and peft_row["error"] is None
        assert peft_row["adapters_copied"] == copied, case
        assert ours["init_loss"] == pytest.approx(peft_row["init_loss"], rel=1e-5), case
    # a variant gets the weights peft got (the gates made equal per layer before anyone's copy)
    assert rows[("llama-adapter", "peftlab[own-loss]")]["init_loss"] == pytest.approx(
        rows[("llama-adapter", "peft")]["init_loss"], rel=1e-6)
    assert rows[("llama-adapter", "peftlab")]["trainable_params"] == rows[("llama-adapter", "peft")]["trainable_params"] + 6


def test_the_gpu_session_script_names_shipped_cases_within_the_device_limit():
    """benchmarks/gpu_session.sh: every `one SPEC CASE LIMIT` names a case of a shipped spec, and
    each part's limits add up to well inside the device tool's 10 minutes a command."""
    import re

    text = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    parts = re.findall(r"^  (\w)\)\n(.*?)\n    ;;", text, flags=re.M | re.S)
    assert [p for p, _ in parts] == ["a", "b"]
    for _, body in parts:
        calls = re.findall(r"one (\S+) (\S+) (\d+)", body)
        assert calls and sum(int(limit) for _, _, limit in calls) <= 570
        for spec, case, _ in calls:
            assert case in {c.name for c in load_spec(ROOT / "benchmarks" / "speed" / f"{spec}.yaml").cases}, (spec, case)


def test_profile_step_script_profiles_each_implementation(capsys):
    """benchmarks/profile_step.py (the README's profile figures) on a shrunk spec: step times and the
    operator table for peftlab and peft, and the per-layer division."""
    import importlib.util

    path = ROOT / "benchmarks" / "profile_step.py"
    module_spec = importlib.util.spec_from_file_location("profile_step", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.main([str(ROOT / "benchmarks" / "speed" / "cpu-llama-small.yaml"), "lora-r8-qv", "fp32", "peftlab", "peft",
                 "--set", "batch.size=1", "--set", "batch.source=32", "--set", "threads=1",
                 "--set", "model.config.num_hidden_layers=1", "--set", "model.config.vocab_size=256",
                 "--warmup", "0", "--reps", "1", "--rows", "5", "--per-layer", "1"])
    out = capsys.readouterr().out
    assert "== peftlab: step" in out and "== peft: step" in out
    assert out.count("per layer (self CPU ms / 1):") == 2 and "aten::mm" in out
    assert out.count("matrix products (") == 2
    with pytest.raises(SystemExit, match="no case 'nope'"):
        module.main([str(ROOT / "benchmarks" / "speed" / "cpu-llama-small.yaml"), "nope", "fp32", "peftlab"])
