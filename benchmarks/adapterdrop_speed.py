"""What AdapterDrop buys at inference: forward and greedy generation with bottleneck adapters in
every block vs with the lowest n blocks of each stack left without (Rücklé et al., 2021).

    python benchmarks/adapterdrop_speed.py                                # mini-t5 and tiny T5, Houlsby
    python benchmarks/adapterdrop_speed.py --models mini-t5 --method pfeiffer --drop 0 1 2 3 --out x.json

For each model it times the base model (no adapters) and the method with ``drop_lowest`` = each
``--drop`` value (0 = adapters everywhere): the median of ``--repeats`` timed runs after a warm-up,
of one teacher-forced forward pass over a batch and of greedy generation of exactly
``--new-tokens`` tokens, every variant built first and the variants timed interleaved (median and
quartiles per variant). Writes JSON with the device, library versions and this command. Timings on
a shared or busy machine are noise: measure on an idle one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from peftlab.device import device_name

from peftlab.provenance import versions
from peftlab.methods import apply_methods, get_method


def build(name: str, device: str):
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    from peftlab.models.loading import resolve_model_name
    from peftlab.models.t5 import T5

    if name == "tiny":
        torch.manual_seed(0)
        config = T5Config(vocab_size=128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **T5.tiny_config)
        model = T5ForConditionalGeneration(config)
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(resolve_model_name(name), dtype=torch.float32)
    return model.to(device).eval()


def _now(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def inputs(model, args, device: str):
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    src = torch.randint(2, vocab, (args.batch, args.src_len), generator=g).to(device)
    tgt = torch.randint(2, vocab, (args.batch, args.new_tokens), generator=g).to(device)
    return src, torch.ones_like(src), tgt


def calls(model, args, device: str) -> dict:
    """The two timed calls of one model: a teacher-forced forward and greedy generation."""
    src, mask, tgt = inputs(model, args, device)

    def forward():
        with torch.no_grad():
            model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)

    def generate():
        with torch.no_grad():
            model.generate(input_ids=src, attention_mask=mask, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, num_beams=1)

    return {"forward": forward, "generate": generate}


def interleaved(variants: list[dict], repeats: int, device: str) -> None:
    """Time every variant's calls ``repeats`` times after one warm-up each, the variants interleaved
    (the order reversed every other round) so that machine noise hits them alike; stores the median
    and quartiles in milliseconds on each variant."""
    for kind in ("forward", "generate"):
        for v in variants:
            v["calls"][kind]()
        times = {id(v): [] for v in variants}
        for r in range(repeats):
            for v in variants if r % 2 == 0 else variants[::-1]:
                t = _now(device)
                v["calls"][kind]()
                times[id(v)].append(1000 * (_now(device) - t))
        for v in variants:
            q1, med, q3 = statistics.quantiles(times[id(v)], n=4, method="inclusive")
            v["row"].update({f"{kind}_ms": round(med, 3), f"{kind}_ms_q1": round(q1, 3), f"{kind}_ms_q3": round(q3, 3)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mini-t5", "tiny"], help="shipped model names, paths, or 'tiny'")
    p.add_argument("--method", default="houlsby", choices=["houlsby", "pfeiffer", "parallel"])
    p.add_argument("--drop", nargs="+", type=int, default=None,
                   help="drop_lowest values to time (default: 0 .. blocks-1; values >= a model's blocks are skipped)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--src-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adapterdrop_speed.json"))
    args = p.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    for name in args.models:
        base = build(name, args.device)
        n_blocks = base.config.num_layers
        variants = [{"row": {"model": name, "drop_lowest": None, "adapters": 0}, "calls": calls(base, args, args.device)}]
        for n in [d for d in args.drop if d < n_blocks] if args.drop is not None else range(n_blocks):
            model = build(name, args.device)
            state = apply_methods(model, [get_method(args.method)(drop_lowest=n)])
            model.eval()
            adapters = sum(1 for m in model.modules() if type(m).__name__ == "BottleneckAdapter")
            row = {"model": name, "drop_lowest": n, "adapters": adapters, "trainable_params": state.trainable_params(model)}
            variants.append({"row": row, "calls": calls(model, args, args.device)})
        interleaved(variants, args.repeats, args.device)
        rows = [v["row"] for v in variants]
        full = next((r for r in rows if r["drop_lowest"] == 0), None)
        for r in rows:
            if full:
                r["forward_speedup_vs_all"] = round(full["forward_ms"] / r["forward_ms"], 3)
                r["generate_speedup_vs_all"] = round(full["generate_ms"] / r["generate_ms"], 3)
            print(json.dumps(r))
        results += rows

    out = {"benchmark": "adapterdrop_speed", "method": args.method, "device": device_name() if args.device == "cpu"
           else torch.cuda.get_device_name(0), "versions": versions(),
           "command": " ".join(["python", *sys.argv]),
           "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"threads": torch.get_num_threads()},
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
