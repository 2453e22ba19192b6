"""One training step of a speed-spec case under ``torch.profiler``, per implementation: where the
README's "where the time went" figures come from (run it on a quiet machine).

    python benchmarks/profile_step.py benchmarks/speed/cpu-llama-small.yaml lora-r8-qv bf16 peftlab peft

Each implementation is built as ``peftlab speed`` builds it (the same base weights, batch, autocast
and AdamW), takes ``--warmup`` steps, is timed over ``--reps`` steps, and one more step is profiled.
It prints the step times, the operators by self CPU time (``--rows``) and the matrix products'
share of the step; with ``--per-layer N`` the times are also divided by N (the model's layers) for
the per-layer figures. Implementation names are ``peftlab speed``'s: ``peftlab``, ``peftlab[VARIANT]``, ``peft``, ``peft+compile``, ``hf``.
``--set key=value`` edits the spec as ``peftlab speed``'s ``key=value`` arguments do (e.g. a smaller
batch to try it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from peftlab.lab.speed import build
from peftlab.lab.speed.spec import load_spec
from peftlab.lab.speed.impls import build_impl
from peftlab.lab.speed.train_case import step


MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_", "aten::addbmm"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("case")
    ap.add_argument("precision", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("impls", nargs="+")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--per-layer", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)

    spec = load_spec(args.spec, args.overrides)
    cases = {c.name: c for c in spec.cases}
    if args.case not in cases:
        raise SystemExit(f"{args.spec}: no case {args.case!r} (cases: {', '.join(cases)})")
    case = cases[args.case]
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    base = build.build_base(spec.model_of(case), device)
    batch = build.make_batch(spec.batch_of(case), base.model.config, device)
    dtype = build.autocast_dtype(args.precision)
    print(f"{args.spec} {args.case} {args.precision}: {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    for name in args.impls:
        impl = build_impl(name, base, case, args.precision, spec.lr, device)
        impl.model.train()
        for _ in range(args.warmup):
            step(impl, batch, device, dtype)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            step(impl, batch, device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        print(f"\n== {name}: step {statistics.median(times):.3f} s (median of {args.reps}: "
              f"{', '.join(f'{t:.3f}' for t in times)})")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step(impl, batch, device, dtype)
        averages = prof.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
        total = sum(e.self_cpu_time_total for e in averages)
        products = sum(e.self_cpu_time_total for e in averages if e.key in MATRIX_PRODUCTS)
        print(f"matrix products ({', '.join(sorted(MATRIX_PRODUCTS))}): {products / 1e3:.0f} ms "
              f"of {total / 1e3:.0f} ms self CPU ({products / max(total, 1):.0%})")
        if args.per_layer:
            print(f"per layer (self CPU ms / {args.per_layer}):")
            top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]
            for e in top:
                print(f"  {e.key[:60]:60s} {e.self_cpu_time_total / 1e3 / args.per_layer:9.2f}")
        del impl


if __name__ == "__main__":
    main()
