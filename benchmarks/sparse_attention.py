"""Peak memory and step time of LoRA fine-tuning on mini-llama: dense attention vs S²-Attn vs the
strided pattern, at 256 ... 4096 tokens. The same script runs on a CPU or a GPU.

    python benchmarks/sparse_attention.py                      # all lengths, cases, paddings
    python benchmarks/sparse_attention.py --lengths 256 512 --repeats 2 --out /tmp/check.json

Each (case, padding, length) runs in a fresh subprocess, which loads mini-llama (real weights,
fp32), applies LoRA r=8 on q, v (+ the sparse method), and times forward + backward of a training
step (no optimizer step) on a batch of ``--batch`` rows of n random tokens, labels = inputs.

Cases:
  dense        HF's SDPA attention, what ``peftlab train`` runs without a sparse method.
  s2_attn      S²-Attn, G = n/4 (LongLoRA), half the heads shifted.
  strided      local window l = 128 + every 128th token.
  dense-eager  HF's eager attention (n×n scores per head, the textbook baseline; opt in, it needs
               ~4 GB more at 4096 tokens).
Paddings:
  none   every row is n real tokens: dense SDPA gets no mask and runs the causal flash kernel
         (on CPU as on GPU: linear memory already; it is time that grows as n²).
  right  the last row ends in n/8 padding tokens: what HF runs for a padded batch, a (B, 1, n, n)
         bool mask that SDPA turns into an additive float mask (n² per row). The sparse methods
         read the padding from that same mask but compute without it.

Measured per run:
  step_s             median wall time of ``--repeats`` steps after one warm-up (GPU: synchronised);
  peak_rss_mib       the subprocess's peak resident set (VmHWM: imports + model + steps);
  rss_loaded_mib     its resident set once the model is loaded, before any step;
  alloc_peak_mib     bytes the allocator holds at the step's peak beyond what was live before
                     it: on GPU ``torch.cuda.max_memory_allocated`` minus the allocation before
                     the step; on CPU, from one step under ``torch.profiler`` (profile_memory):
                     the maximum ``total_allocated`` of its Allocation events, which count every
                     tensor allocated and freed inside the profiled step;
  attention_kernels  the attention ops that step ran (which SDPA kernel, or bmm + softmax).
mini-llama has max_position_embeddings 2048; for n > 2048 it is raised to n in the config (RoPE
computes any position; nothing else changes). Results go to ``--out`` (JSON, with the command,
device, CPU model / GPU name, versions) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ("dense", "s2_attn", "strided", "dense-eager")


def worker(spec: dict) -> dict:
    import torch

    from peftlab.methods import apply_methods
    from peftlab.methods.lora import LoraConfig
    from peftlab.methods.s2_attn import S2AttnConfig
    from peftlab.methods.strided import StridedConfig
    from peftlab.models.loading import load_model
    from peftlab.schema import ModelSpec

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    n, device, case = spec["tokens"], spec["device"], spec["case"]
    model = load_model(ModelSpec(name="mini-llama", config={"max_position_embeddings": n} if n > 2048 else {})).model
    if case == "dense-eager":
        model.set_attn_implementation("eager")
    methods = [LoraConfig(r=8, alpha=16, targets=("q", "v"))]
    if case == "s2_attn":
        methods.append(S2AttnConfig(group_fraction=spec["group_fraction"]))
    elif case == "strided":
        methods.append(StridedConfig(window=spec["window"], stride=spec["stride"]))
    apply_methods(model, methods)
    model.to(device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (spec["batch"], n), generator=g)
    mask = torch.ones_like(ids)
    if spec["padding"] == "right":
        mask[-1, n - n // 8:] = 0
        ids[mask == 0] = 0
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
             "labels": ids.masked_fill(mask == 0, -100).to(device)}
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["bf16"])

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        return float(loss)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    from peftlab.device import peak_rss_bytes

    rss_loaded = peak_rss_bytes() / 2**20
    loss = step()  # warm-up (kernels, masks, caches)
    times = []
    for _ in range(spec["repeats"]):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak_rss = peak_rss_bytes() / 2**20  # VmHWM (ru_maxrss would start at the parent's RSS)
    alloc_peak, kernels = allocator_peak(step, device)
    return {"step_s": statistics.median(times), "step_s_all": times, "peak_rss_mib": peak_rss,
            "rss_loaded_mib": rss_loaded, "alloc_peak_mib": alloc_peak / 2**20, "loss": loss,
            "attention_kernels": kernels}


def allocator_peak(step, device) -> tuple[int, list[str]]:
    """Peak bytes allocated during one step beyond what was live before it, and its attention ops."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, profile_memory=device == "cpu") as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    kernels = sorted({e.key for e in prof.key_averages()
                      if any(w in e.key for w in ("attention", "softmax", "bmm")) and e.key.startswith("aten::")})
    if device == "cuda":
        return torch.cuda.max_memory_allocated() - before, kernels
    from torch._C._profiler import _EventType

    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation and str(node.typed[1].device) == "cpu":
            peak = max(peak, node.typed[1].total_allocated)
    return peak, kernels


def device_info(device: str) -> dict:
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"type": "cpu", "name": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    """What every peftlab results file records (``peftlab.provenance.versions``)."""
    from peftlab.provenance import versions as library_versions

    return library_versions()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--cases", nargs="+", default=["dense", "s2_attn", "strided"], choices=CASES)
    ap.add_argument("--paddings", nargs="+", default=["none", "right"], choices=["none", "right"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group-fraction", type=float, default=0.25, help="S²-Attn: G = fraction · n")
    ap.add_argument("--window", type=int, default=128, help="strided: local window l")
    ap.add_argument("--stride", type=int, default=128, help="strided: every s-th token")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (default: fp32)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/sparse-attention-DEVICE.json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"sparse-attention-{device}.json")
    settings = {"model": "mini-llama (fp32 weights)", "lora": "r=8 alpha=16 on q, v", "batch": args.batch,
                "group_fraction": args.group_fraction, "window": args.window, "stride": args.stride,
                "autocast": "bf16" if args.bf16 else "none (fp32)", "repeats": args.repeats,
                "threads": args.threads or "torch default", "step": "forward + backward, no optimizer step"}
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": device_info(device),
              "versions": versions(), "settings": settings, "results": []}
    for n in args.lengths:
        for padding in args.paddings:
            for case in args.cases:
                spec = {"tokens": n, "case": case, "padding": padding, "device": device, "batch": args.batch,
                        "repeats": args.repeats, "group_fraction": args.group_fraction, "window": args.window,
                        "stride": args.stride, "bf16": args.bf16, "threads": args.threads}
                row = {"case": case, "padding": padding, "tokens": n, **run(spec, args.timeout)}
                report["results"].append(row)
                print(line(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2))  # after every run: a long sweep keeps what it has
    print(f"\n{table(report['results'])}\nwritten {out}")


def run(spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout} s"}
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else tail
        return {"status": f"failed (exit {done.returncode}): {why}"}
    return {"status": "ok", **json.loads(result[-1][len("RESULT "):])}


def line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['case']:12} {row['padding']:6} n={row['tokens']:5}  {row['status']}"
    return (f"{row['case']:12} {row['padding']:6} n={row['tokens']:5}  step {row['step_s']:7.3f} s  "
            f"peak RSS {row['peak_rss_mib']:7.0f} MiB  allocator {row['alloc_peak_mib']:7.1f} MiB  "
            f"{', '.join(k.replace('aten::', '') for k in row['attention_kernels'])}")


def table(rows: list[dict]) -> str:
    head = "| tokens | padding | case | step s | peak RSS MiB | allocator peak MiB |\n|---:|---|---|---:|---:|---:|"
    body = [f"| {r['tokens']} | {r['padding']} | {r['case']} | " + (
        f"{r['step_s']:.3f} | {r['peak_rss_mib']:.0f} | {r['alloc_peak_mib']:.1f} |" if r["status"] == "ok"
        else f"{r['status']} | | |") for r in rows]
    return "\n".join([head, *body])


if __name__ == "__main__":
    main()
