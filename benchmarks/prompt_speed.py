"""Prompt tuning / P-tuning speed, peftlab against HF peft on the same model, batch and weights.

    python benchmarks/prompt_speed.py [--model mini-t5|mini-llama] [--steps 20] [--batch 16] [--length 192]

Times a training step (forward + backward + AdamW on the prompt parameters) and a greedy
``generate`` of 32 tokens, alternating the two implementations so machine load hits both alike;
prints the median seconds per step and the ratio. Run it on an idle machine: the README's rule is
that no peftlab method may be slower than peft's version of it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from peftlab.methods import apply_methods
from peftlab.methods.hooks import virtual_tokens
from peftlab.methods.p_tuning import PTuningConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig
from peftlab.models.loading import load_model
from peftlab.schema import ModelSpec

warnings.filterwarnings("ignore")


def pair(base, method: str, n: int):
    import peft

    causal = not base.config.is_encoder_decoder
    task = "CAUSAL_LM" if causal else "SEQ_2_SEQ_LM"
    if method == "prompt_tuning":
        theirs_cfg = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=n, num_transformer_submodules=1)
        ours_cfg = PromptTuningConfig(num_virtual_tokens=n)
    else:
        d = base.config.hidden_size if causal else base.config.d_model
        theirs_cfg = peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=n, num_transformer_submodules=1,
                                              encoder_hidden_size=d)
        ours_cfg = PTuningConfig(num_virtual_tokens=n)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_cfg)
    ours = base
    apply_methods(ours, [ours_cfg])
    return {"peft": theirs, "peftlab": ours}


def step_time(model, batch) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = model.__dict__.setdefault("_bench_opt", torch.optim.AdamW(params, lr=1e-3))
    t = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


@torch.no_grad()
def generate_time(model, batch, causal: bool) -> float:
    kw = {} if not causal else {"use_cache": True}
    t = time.perf_counter()
    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=32,
                   do_sample=False, pad_token_id=0, **kw)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mini-t5")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=192)
    ap.add_argument("--virtual", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = load_model(ModelSpec(name=args.model)).model.train()
    causal = not base.config.is_encoder_decoder
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (args.batch, args.length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": ids if causal else torch.randint(5, 1000, (args.batch, 40), generator=g)}
    print(f"{args.model}, batch {args.batch} x {args.length} tokens + {args.virtual} virtual, "
          f"{torch.get_num_threads()} threads")
    for method in ("prompt_tuning", "p_tuning"):
        models = pair(copy.deepcopy(base), method, args.virtual)
        with torch.no_grad():  # same prompt in both (peft's inference-free training path runs its encoder)
            vt = virtual_tokens.find(models["peftlab"])
            enc = models["peft"].prompt_encoder["default"]
            (vt.prompt if method == "prompt_tuning" else vt.embedding).copy_(enc.embedding.weight)
        times = {k: [] for k in models}
        gen = {k: [] for k in models}
        for i in range(args.steps + 2):  # two warm-up steps, alternating implementations
            for name, model in (models.items() if i % 2 else reversed(models.items())):
                dt = step_time(model, batch)
                if i >= 2:
                    times[name].append(dt)
        for i in range(3):
            for name, model in models.items():
                model.eval()
                gen[name].append(generate_time(model, {k: v[:4] for k, v in batch.items()}, causal))
                model.train()
        med = {k: statistics.median(v) for k, v in times.items()}
        gmed = {k: statistics.median(v) for k, v in gen.items()}
        print(f"{method:14s} train step: peftlab {med['peftlab']:.3f}s  peft {med['peft']:.3f}s  "
              f"(peftlab/peft {med['peftlab'] / med['peft']:.2f});  generate 4x32: peftlab {gmed['peftlab']:.2f}s  "
              f"peft {gmed['peft']:.2f}s")


if __name__ == "__main__":
    main()
