"""Peak memory of one implementation, in a fresh process that builds only it.

``python -m peftlab.lab.speed.memory '<json>'`` builds the case's base and one implementation, trains
``warmup + memory_steps`` steps (an inference case: runs its forward pass and generation as many
times) and prints one JSON line. On a GPU the figure is
``torch.cuda.max_memory_allocated`` since the process started (weights + activations + optimizer
state); on a CPU it is the process's peak resident set (``VmHWM``: everything the process ever
touched, the Python interpreter and libraries included), with the resident set before building
and after building beside it so the training part can be read off. Every worker imports the same
libraries (peft included) before measuring, so the interpreter's share is equal on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _rss_now() -> int:
    from peftlab.device import proc_kib_field

    return proc_kib_field("/proc/self/status", "VmRSS") or 0


def measure(job: dict) -> dict:
    import torch
    import transformers  # noqa: F401  (equal baselines: see the module docstring)

    try:
        import peft  # noqa: F401
    except ImportError:
        pass
    from peftlab.lab.speed import build
    from peftlab.lab.speed.spec import load_spec

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    spec = load_spec(job["spec"], job.get("overrides", ()))
    case = next(c for c in spec.cases if c.name == job["case"])
    device = build.resolve_device(spec.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_start = _rss_now()
    base = build.build_base(spec.model_of(case), device)
    batch = build.make_batch(spec.batch_of(case), base.model.config, device)
    dtype = build.autocast_dtype(job["precision"])
    repeats = spec.warmup_of(case) + spec.memory_steps
    if case.kind == "inference":
        from peftlab.lab.speed.impls import build_model, methods_of
        from peftlab.lab.speed.inference import run_for_memory

        model = build_model(job["impl"], base, case, copy=False)
        del base
        rss_built = _rss_now()
        batch = build.batch_for(batch, methods_of(case, job["impl"]))
        run_for_memory(model, batch, case, spec.batch_of(case), device, dtype, repeats)
    else:
        from peftlab.lab.speed.impls import build_impl
        from peftlab.lab.speed.train_case import step

        impl = build_impl(job["impl"], base, case, job["precision"], spec.lr, device, copy=False)
        del base
        rss_built = _rss_now()
        impl.model.train()
        for _ in range(repeats):
            step(impl, batch, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device), "kind": "cuda_max_allocated"}
    from peftlab.device import peak_rss_bytes

    peak = peak_rss_bytes()  # VmHWM: ru_maxrss would start at the parent's resident set (see there)
    return {"peak_bytes": peak, "kind": "cpu_peak_rss", "rss_start_bytes": rss_start, "rss_built_bytes": rss_built,
            "peak_minus_start_bytes": peak - rss_start}


def in_subprocess(job: dict, timeout: float = 3600) -> dict:
    """Run ``measure(job)`` in a fresh interpreter; an error comes back as ``{"error": ...}``."""
    try:
        proc = subprocess.run([sys.executable, "-m", "peftlab.lab.speed.memory", json.dumps(job)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory worker timed out after {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory worker failed (exit {proc.returncode}): {tail}"[:300]}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
