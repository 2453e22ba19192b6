"""IA3: peftlab's against HF peft's, on the same model and batch: a training step (forward +
backward) and an inference forward pass.

    python benchmarks/ia3_speed.py                        # mini-t5
    python benchmarks/ia3_speed.py --model tiny --repeats 50 --out x.json

Both wrap the same layers (T5: k, v, wo; LLaMA: k_proj, v_proj, down_proj) with the same vectors;
each time is the median of ``--repeats`` runs after a warm-up, alternating peftlab and peft so both
see the same machine load. Writes JSON with the device, library versions and this command. Timings
on a shared or busy machine are noise: measure on an idle one.
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
from peftlab.methods.ia3 import IA3Config

sys.path.insert(0, str(Path(__file__).parent))
from adapterdrop_speed import build  # noqa: E402  (same model loading)


def main(argv=None) -> int:
    import peft
    import transformers

    transformers.utils.logging.disable_progress_bar()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mini-t5", help="a shipped T5 name, a path, or 'tiny'")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--src-len", type=int, default=256)
    p.add_argument("--tgt-len", type=int, default=48)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ia3_speed.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = build(args.model, args.device)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(task_type=None))
    ours = base
    apply_methods(ours, [IA3Config()])
    g = torch.Generator().manual_seed(0)
    vocab = base.config.vocab_size
    batch = {"input_ids": torch.randint(2, vocab, (args.batch, args.src_len), generator=g),
             "labels": torch.randint(2, vocab, (args.batch, args.tgt_len), generator=g)}
    batch = {k: v.to(args.device) for k, v in batch.items()}

    def train_step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    def infer(model):
        model.eval()
        with torch.no_grad():
            model(**batch)

    results = {}
    for what, fn in (("train_step", train_step), ("forward", infer)):
        times = {"peftlab": [], "peft": []}
        for model in (ours, theirs):
            fn(model)  # warm-up
        for _ in range(args.repeats):
            for key, model in (("peftlab", ours), ("peft", theirs)):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn(model)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[key].append(1000 * (time.perf_counter() - t))
        med = {k: round(statistics.median(v), 3) for k, v in times.items()}
        results[what] = {"peftlab_ms": med["peftlab"], "peft_ms": med["peft"],
                         "peft_over_peftlab": round(med["peft"] / med["peftlab"], 3)}
        print(what, json.dumps(results[what]))

    out = {"benchmark": "ia3_speed", "model": args.model,
           "device": device_name() if args.device == "cpu" else torch.cuda.get_device_name(0),
           "versions": {**versions(), "peft": peft.__version__}, "command": " ".join(["python", *sys.argv]),
           "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"threads": torch.get_num_threads()},
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
