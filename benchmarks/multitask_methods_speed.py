"""HyperFormer++ and UniPELT against the plain methods they are built from, on the same model and
batch: a training step (forward + backward), an inference forward and greedy generation.

    python benchmarks/multitask_methods_speed.py                   # mini-t5
    python benchmarks/multitask_methods_speed.py --model tiny --repeats 5 --out x.json

Pairs (no reference library runs these methods beside transformers 5, so the cost they add is
measured against their own parts): HyperFormer++ with a batch of mixed tasks against Houlsby
adapters of the same size in the same places (what the hypernetwork adds: generating the weights
each step, one adapter call per task of the batch); UniPELT against LoRA + prefix + Pfeiffer
without gates (what the gates add). Each time is the median of ``--repeats`` runs after a warm-up,
the two methods of a pair alternating so both see the same machine load. Writes JSON with the
device, versions and this command. Timings on a shared or busy machine are noise: measure on an
idle one.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from peftlab.device import device_name

from peftlab.provenance import versions
from peftlab.methods import apply_methods
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.hyperformer import HyperFormerConfig
from peftlab.methods.lora import LoraConfig
from peftlab.methods.pfeiffer import PfeifferConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.unipelt import UniPELTConfig

sys.path.insert(0, str(Path(__file__).parent))
from adapterdrop_speed import build  # noqa: E402  (same model loading)

PAIRS = {
    "hyperformer": ([HyperFormerConfig(tasks=4, reduction_factor=32, train_norms=False)],
                    [HoulsbyConfig(reduction_factor=32, ln_after=True, nonlinearity="gelu_new")]),
    "unipelt": ([UniPELTConfig(prefix_projection=0)],
                [LoraConfig(r=8), PrefixConfig(length=10), PfeifferConfig()]),
}


def main(argv=None) -> int:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mini-t5", help="a shipped T5 name, a path, or 'tiny'")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--src-len", type=int, default=256)
    p.add_argument("--tgt-len", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/multitask_methods_speed.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = build(args.model, args.device)
    g = torch.Generator().manual_seed(0)
    vocab = base.config.vocab_size
    batch = {"input_ids": torch.randint(2, vocab, (args.batch, args.src_len), generator=g),
             "labels": torch.randint(2, vocab, (args.batch, args.tgt_len), generator=g)}
    batch = {k: v.to(args.device) for k, v in batch.items()}
    task_ids = (torch.arange(args.batch) % 4).to(args.device)  # four tasks mixed in every batch

    def calls(model, multitask):
        extra = {"task_ids": task_ids} if multitask else {}

        def train_step():
            model.train()
            model.zero_grad(set_to_none=True)
            model(**batch, **extra).loss.backward()

        def forward():
            model.eval()
            with torch.no_grad():
                model(**batch, **extra)

        def generate():
            model.eval()
            with torch.no_grad():
                model.generate(input_ids=batch["input_ids"][:4], max_new_tokens=args.new_tokens, do_sample=False,
                               min_new_tokens=args.new_tokens)

        return {"train_step": train_step, "forward": forward, "generate": generate}

    results = {}
    for pair, (method, parts) in PAIRS.items():
        models = {}
        for key, configs in ((pair, method), ("parts", parts)):
            models[key] = copy.deepcopy(base)
            apply_methods(models[key], configs)
        fns = {key: calls(m, key == "hyperformer") for key, m in models.items()}
        for what in ("train_step", "forward", "generate"):
            times = {key: [] for key in models}
            for key in models:
                fns[key][what]()  # warm-up
            for _ in range(args.repeats):
                for key in models:
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    fns[key][what]()
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    times[key].append(1000 * (time.perf_counter() - t))
            med = {k: round(statistics.median(v), 3) for k, v in times.items()}
            results[f"{pair}/{what}"] = {f"{pair}_ms": med[pair], "parts_ms": med["parts"],
                                         "ratio": round(med[pair] / med["parts"], 3)}
            print(f"{pair} {what}", json.dumps(results[f"{pair}/{what}"]))

    out = {"benchmark": "multitask_methods_speed", "model": args.model,
           "pairs": {k: [[c.describe() for c in v[0]], [c.describe() for c in v[1]]] for k, v in PAIRS.items()},
           "device": device_name() if args.device == "cpu" else torch.cuda.get_device_name(0),
           "versions": versions(), "command": " ".join(["python", *sys.argv]),
           "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"threads": torch.get_num_threads()},
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
