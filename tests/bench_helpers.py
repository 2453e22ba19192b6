"""Tiny benches for tests: the 5-function code->doc sample and a 12-row sentiment set, a 1-layer T5
of ~140k parameters, 2 steps: a run takes about a second."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_runs import SMOKE, make_data

TINY_OVERRIDES = """\
overrides:
  model.config: {d_model: 16, d_kv: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 2}
  train.log_every: 1
  train.mixed_precision: "no"  # fp32: bf16 kernels of tiny shapes cost more to make than to run
  data.max_source_length: 64
  data.max_target_length: 16
  data.max_eval_examples: 4
  eval.max_examples: 3
  eval.max_new_tokens: 3
"""

SENTIMENT = {
    "train": [{"text": f"good film {i}", "label": "pos"} for i in range(6)]
    + [{"text": f"bad film {i}", "label": "neg"} for i in range(6)],
    "valid": [{"text": "fine film", "label": "pos"}, {"text": "awful", "label": "neg"}],
    "test": [{"text": "awful movie", "label": "neg"}, {"text": "great", "label": "pos"},
             {"text": "good", "label": "pos"}],
}


def make_sentiment(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in SENTIMENT.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_spec(tmp: Path, *, methods: str | None = None, tasks: str | None = None, seeds: str = "[0, 1]",
               budget: str = "{steps: 2}", extra: str = "", name: str = "bench.yaml") -> Path:
    """A bench spec over the tiny data (written under ``tmp``); the sections can be replaced."""
    code = make_data(tmp / "code")
    sentiment = make_sentiment(tmp / "sentiment")
    methods = methods or "  - {label: LoRA, methods: [{name: lora, r: 4}]}\n  - {name: ia3}\n"
    tasks = tasks or (f"  - {{name: code2doc, path: {code}}}\n"
                      f"  - {{task: {{name: classify, path: {sentiment}}}, label: sentiment}}\n")
    spec = tmp / name
    spec.write_text(f"base: {SMOKE}\n{TINY_OVERRIDES}methods:\n{methods}tasks:\n{tasks}seeds: {seeds}\n"
                    f"budget: {budget}\n{extra}")
    return spec
