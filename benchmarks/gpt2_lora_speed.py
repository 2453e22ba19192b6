"""LoRA on GPT-2's Conv1D layers: peftlab's against HF peft's (``fan_in_fan_out``), on the same model
and batch: a training step (forward + backward) and an inference forward pass.

    python benchmarks/gpt2_lora_speed.py                          # GPT-2 small's shape, random weights
    python benchmarks/gpt2_lora_speed.py --layers 2 --width 64 --repeats 3 --out /tmp/x.json   # quick check

Both wrap the same layers (``--targets``, default c_attn as peft's GPT-2 default) with the same rank;
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
from peftlab.methods.lora import LoraConfig


def main(argv=None) -> int:
    import peft
    from transformers import GPT2Config, GPT2LMHeadModel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--targets", nargs="+", default=["c_attn"])
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpt2_lora_speed.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads, vocab_size=args.vocab,
                        n_positions=max(1024, args.seq_len), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(config).to(args.device)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=args.r, lora_alpha=2 * args.r, target_modules=args.targets, lora_dropout=0.0, fan_in_fan_out=True))
    ours = base
    apply_methods(ours, [LoraConfig(r=args.r, alpha=2 * args.r, targets=tuple(args.targets))])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g).to(args.device)
    batch = {"input_ids": ids, "labels": ids}

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

    out = {"benchmark": "gpt2_lora_speed",
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
