"""``peftlab env`` and the command line's own housekeeping: the environment report a bug report
needs, the command being run (results files record it), and what reaches the terminal."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from peftlab.device import cpu_capability, cpu_model, cuda_native_bf16, native_bf16_cpu, resolve_precision
from peftlab.provenance import installed_version, versions


def report() -> dict:
    """Everything ``peftlab env`` prints: what a bug report needs and what decides speed."""
    import torch

    from peftlab.kernels import native

    cuda = torch.cuda.is_available()
    rep = {
        **versions(),
        "peft": installed_version("peft"),
        "bitsandbytes": installed_version("bitsandbytes"),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "device": "cuda" if cuda else "cpu",
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_capability": cpu_capability(),
        "native_bf16_cpu": native_bf16_cpu(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [_gpu(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "auto_precision": resolve_precision("auto", "cuda" if cuda else "cpu"),
        "native_kernels": native.status(),  # peftlab's C kernels: built (here, once) and loaded, or why not
    }
    return rep


def _gpu(i: int) -> dict:
    import torch

    p = torch.cuda.get_device_properties(i)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
            "compute_capability": f"{p.major}.{p.minor}", "native_bf16": cuda_native_bf16(i)}


def format_report(rep: dict) -> str:
    """``report()`` as aligned ``name  value`` lines."""
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    rows = [(k, rep[k] or "not installed") for k in
            ("peftlab", "torch", "transformers", "accelerate", "peft", "bitsandbytes")]
    if rep.get("peftlab_commit"):
        rows[0] = ("peftlab", f"{rep['peftlab']} (commit {rep['peftlab_commit']})")
    rows += [("python", rep["python"]), ("os", rep["os"]), ("device", rep["device"]),
             ("cpu", f"{rep['cpu']} ({rep['cpu_cores']} cores)"), ("cpu capability", rep["cpu_capability"]),
             ("native bf16 (cpu)", yes(rep["native_bf16_cpu"])), ("torch threads", rep["torch_threads"]),
             ("cuda", rep["cuda"] or "not available")]
    for i, g in enumerate(rep["gpus"]):
        rows.append((f"gpu {i}", f"{g['name']}, {g['memory_gib']} GiB, compute {g['compute_capability']}, "
                                 f"native bf16 {yes(g['native_bf16'])}"))
    why = {"bf16": "bf16 autocast: the device computes bf16 natively",
           "fp16": "fp16 autocast with loss scaling: this GPU has no bf16",
           "no": "fp32: no native bf16 here, and emulated bf16 is ~50x slower"}
    rows.append(("mixed_precision: auto", f"{rep['auto_precision']} ({why.get(rep['auto_precision'], '')})"))
    rows.append(("peftlab C kernels (cpu)", rep.get("native_kernels") or "not checked"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


_INVOCATION: list[str] | None = None


def set_invocation(argv) -> None:
    """Record the peftlab command line being run (``peftlab.lab.cli.main`` calls this)."""
    global _INVOCATION
    _INVOCATION = list(argv)


def command_line(default: str = "python") -> str:
    """``peftlab <args>`` as the user typed it (for results files), whether the CLI was started
    from a shell or called in-process (``main([...])``); ``default`` when it was not the CLI."""
    import shlex
    import sys

    argv = _INVOCATION
    if argv is None and sys.argv and Path(sys.argv[0]).name == "peftlab":
        argv = sys.argv[1:]
    return "peftlab " + " ".join(shlex.quote(a) for a in argv) if argv is not None else default


# Other libraries' warnings that tell a peftlab user nothing, by library and opening words: peft
# imports bitsandbytes, which on an AVX512-BF16 CPU tries an optional kernel from the hub and
# falls back on its own when the hub's copy is not trusted.
_NOISE = (("bitsandbytes", "Failed to load CPU gemm_4bit_forward"),)


def configure_logging() -> None:
    """peftlab's commands log at INFO, one message a line: peftlab's own lines, and other libraries'
    warnings and errors. Their INFO lines say nothing to the user (matplotlib's "generated new
    fontManager" on a first run; rouge_score's absl "Using default tokenizer." once per scoring
    call, kept from being logged at all), nor do the warnings in ``_NOISE``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(shown_on_terminal)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("absl").setLevel(logging.WARNING)


def shown_on_terminal(record: logging.LogRecord) -> bool:
    """Whether a log record reaches the terminal of a peftlab command (see ``configure_logging``)."""
    library = record.name.split(".")[0]
    if library in ("peftlab", "__main__"):  # __main__: peftlab's modules run as child processes
        return True
    message = record.getMessage()
    return record.levelno >= logging.WARNING and not any(
        library == lib and message.startswith(words) for lib, words in _NOISE)
