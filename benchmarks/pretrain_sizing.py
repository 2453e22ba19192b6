"""Tokens/s of candidate model sizes for pretraining, on this CPU, and the compute-optimal choice.

    python benchmarks/pretrain_sizing.py configs/pretrain/mini-t5-v2.yaml --threads 1 \
        --budget-hours 5 --min-tokens 70e6 --out benchmarks/results/pretrain-v2/sizing-t5.json

Each candidate is the config's architecture with some fields replaced (``--candidates`` YAML, or
the built-in list for the config's model type), trained through peftlab's own loop on random
tokens of the recipe's shapes (batch, input and target lengths) for ``--steps`` steps after
``--warmup``; tokens/s is the median step's. ``peftlab.pretrain.scaling.choose`` then picks the size
with the lowest predicted loss for ``budget-hours`` at the measured rate. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from peftlab.device import hardware

from peftlab.provenance import versions
from peftlab.pretrain import scaling
from peftlab.pretrain.objectives import compute_input_and_target_lengths
from peftlab.pretrain.recipe import PretrainConfig, load_pretrain_config, model_from_config

T5_CANDIDATES = [
    {"name": "t5-d192-L3", "d_model": 192, "d_kv": 32, "num_heads": 6, "d_ff": 768, "num_layers": 3, "num_decoder_layers": 3},
    {"name": "t5-d256-L3", "d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 1024, "num_layers": 3, "num_decoder_layers": 3},
    {"name": "t5-d256-L4 (v1)", "d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 1024, "num_layers": 4, "num_decoder_layers": 4},
    {"name": "t5-d288-L4", "d_model": 288, "d_kv": 32, "num_heads": 9, "d_ff": 1152, "num_layers": 4, "num_decoder_layers": 4},
    {"name": "t5-d320-L5", "d_model": 320, "d_kv": 64, "num_heads": 5, "d_ff": 1280, "num_layers": 5, "num_decoder_layers": 5},
    {"name": "t5-d384-L4", "d_model": 384, "d_kv": 64, "num_heads": 6, "d_ff": 1536, "num_layers": 4, "num_decoder_layers": 4},
    {"name": "t5-d384-L6", "d_model": 384, "d_kv": 64, "num_heads": 6, "d_ff": 1024, "num_layers": 6, "num_decoder_layers": 6},
]
LLAMA_CANDIDATES = [
    {"name": "llama-h192-L6", "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6,
     "num_attention_heads": 6, "num_key_value_heads": 3},
    {"name": "llama-h256-L8 (v1)", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
     "num_attention_heads": 8, "num_key_value_heads": 4},
    {"name": "llama-h256-L6", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6,
     "num_attention_heads": 8, "num_key_value_heads": 4},
    {"name": "llama-h320-L8", "hidden_size": 320, "intermediate_size": 864, "num_hidden_layers": 8,
     "num_attention_heads": 5, "num_key_value_heads": 5},
    {"name": "llama-h384-L8", "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8,
     "num_attention_heads": 6, "num_key_value_heads": 3},
    {"name": "llama-h512-L8", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
     "num_attention_heads": 8, "num_key_value_heads": 4},
]


class _Vocab:
    """What the recipe's model builder reads of a tokenizer (ids as peftlab's tokenizers have them)."""

    def __init__(self, size: int):
        self.size, self.pad_token_id, self.eos_token_id, self.bos_token_id = size, 0, 1, 3

    def __len__(self) -> int:
        return self.size


def random_batch(cfg: PretrainConfig, gen: torch.Generator) -> dict:
    bs, v = cfg.train.batch_size, cfg.vocab_size
    if cfg.objective == "causal":
        x = torch.randint(104, v, (bs, cfg.inputs_length), generator=gen)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}
    _, target_len = compute_input_and_target_lengths(cfg.inputs_length, cfg.noise_density, cfg.mean_span_length)
    x = torch.randint(104, v, (bs, cfg.inputs_length), generator=gen)
    return {"input_ids": x, "attention_mask": torch.ones_like(x),
            "labels": torch.randint(104, v, (bs, target_len), generator=gen)}


def measure(cfg: PretrainConfig, steps: int, warmup: int) -> dict:
    from peftlab.train.loop import LoopOptions, train

    model = model_from_config(cfg, _Vocab(cfg.vocab_size), cfg.train.seed)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(cfg, gen) for _ in range(4)]

    class Plan:
        rank, world = 0, 1

        def iterate(self, epoch=0, index=0):
            i = 0
            while True:
                yield 0, i, batches[i % len(batches)]
                i += 1

    rows = []
    spec = dataclasses.replace(cfg.train, max_steps=warmup + steps, log_every=1, warmup_steps=1)
    t0 = time.perf_counter()
    result = train(model, Plan(), spec, log_row=rows.append, options=LoopOptions(progress=False))
    rates = [r["tokens_per_second"] for r in rows if "tokens_per_second" in r][warmup:]
    return {"parameters": sum(p.numel() for p in model.parameters()), "tokens_per_second": statistics.median(rates),
            "tokens_per_second_min_max": [min(rates), max(rates)], "steps_timed": len(rates),
            "precision": result.precision, "cpu_share": result.cpu_share, "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-hours", type=float, default=5.0)
    ap.add_argument("--min-tokens", type=float, default=0.0, help="tokens the chosen size must reach in the budget")
    ap.add_argument("--max-params", type=float, default=25e6, help="bf16 weights <= 50 MB")
    ap.add_argument("--only", action="append", default=[], help="measure only candidates whose name starts so")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_pretrain_config(args.config)
    kind = base.architecture["model_type"]
    candidates = T5_CANDIDATES if kind == "t5" else LLAMA_CANDIDATES
    rows = []
    for cand in candidates:
        if args.only and not any(cand["name"].startswith(o) for o in args.only):
            continue
        arch = {**base.architecture, **{k: v for k, v in cand.items() if k != "name"}}
        cfg = dataclasses.replace(base, architecture=arch)
        row = {"name": cand["name"], "architecture": arch, **measure(cfg, args.steps, args.warmup)}
        print(f"{row['name']}: {row['parameters']:,} params, {row['tokens_per_second']:,.0f} tokens/s "
              f"(cpu share {row['cpu_share']:.2f})", flush=True)
        rows.append(row)
    choice = scaling.choose(rows, args.budget_hours * 3600, min_tokens=args.min_tokens, max_params=args.max_params)
    for r in choice["rows"]:
        print(f"  {r['name']:20s} D={r['tokens'] / 1e6:6.1f}M  D/N={r['tokens_per_param']:5.1f}  "
              f"L={r['predicted_loss']:.4f}  {r['ineligible'] or ''}")
    print("chosen:", choice["chosen"])
    out = {"command": "python " + " ".join(sys.argv), "config": str(args.config),
           "threads": args.threads, "batch_size": base.train.batch_size, "inputs_length": base.inputs_length,
           "machine": hardware(), "versions": versions(), "budget_hours": args.budget_hours,
           "min_tokens": args.min_tokens, "max_params": args.max_params, **choice}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
