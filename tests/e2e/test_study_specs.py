"""The study's specs run end to end: seed 000's claim (tuning, seeds, the cross-project evaluation and
the contrasts that are the claim) and seed 003's table, shrunk to tiny models, data and budgets."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_runs import make_data

ROOT = Path(__file__).resolve().parents[2]
TINY_T5 = "{d_model: 16, d_kv: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 2}"
TINY_LLAMA = "{hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}"


def _shrunk(model: str, task: str) -> tuple[str, ...]:
    return (f"overrides={{model.config: {model}, model.init: random, train.mixed_precision: 'no', train.log_every: 1, "
            f"train.warmup_steps: 0, data.max_source_length: 48, data.max_target_length: 8, data.max_eval_examples: 3, "
            f"eval.max_examples: 3, eval.max_new_tokens: 3, eval.perplexity: null, eval.select: {{}}}}",
            f"tasks=[{task}]", "seeds=[0, 1]", "budget={steps: 1}", "tuning={runs: 4, steps: 1, max_examples: 3}",
            "isolate=false", "evals={}")


def test_seed000_claim_spec_runs_end_to_end_with_its_contrasts(tmp_path):
    from peftlab.lab.bench.run import run_bench

    data = make_data(tmp_path / "c2d")
    out = tmp_path / "out"
    index = run_bench(ROOT / "configs" / "bench" / "seed000-claim.yaml", out, progress=False,
                      overrides=_shrunk(TINY_T5, f"{{name: code2doc, path: {data}}}"))
    assert all(r["state"] == "complete" for r in index["runs"])
    assert len([r for r in index["runs"] if r.get("stage") == "tune"]) == 4 * 5  # 5 trained rows, 4 rates each
    report = (out / "report.md").read_text()
    contrasts = report.split("## Contrasts")[1].split("\n## ")[0]
    assert "| LoRA r=32 + alignment − LoRA r=32 | code2doc CodeXGLUE BLEU |" in contrasts
    assert "| LoRA r=32 + alignment (replace) − LoRA r=32 |" in contrasts
    assert "## Learning rates" in report and "## Examples" in report
    tuned = json.loads((out / "code2doc" / "lora-r32-alignment" / "tuning.json").read_text())
    assert tuned["grid"] == [0.0003, 0.001, 0.003, 0.01]  # LoRA's grid for the composed row


def test_seed003_spec_runs_end_to_end_with_its_contrasts(tmp_path):
    from peftlab.lab.bench.run import run_bench

    rows = [{"instruction": f"Say the number {i} twice.", "context": "", "response": f"{i} {i}"} for i in range(12)]
    for split, part in (("train", rows[:8]), ("valid", rows[8:10]), ("test", rows[10:])):
        (tmp_path / "instr").mkdir(exist_ok=True)
        (tmp_path / "instr" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "out"
    index = run_bench(ROOT / "configs" / "bench" / "seed003.yaml", out, progress=False,
                      overrides=_shrunk(TINY_LLAMA, f"{{name: instruction, path: {tmp_path / 'instr'}}}"))
    assert all(r["state"] == "complete" for r in index["runs"])
    contrasts = (out / "report.md").read_text().split("## Contrasts")[1].split("\n## ")[0]
    for a, b in (("LLaMA-Adapter v1 + sparse", "LLaMA-Adapter v1"), ("LLaMA-Adapter v2", "LoRA r=8")):
        assert f"| {a} − {b} |" in contrasts
