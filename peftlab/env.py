"""What decides speed, and where a result was measured: device, CPU features, precision, versions.

``resolve_precision`` is the one place where a requested ``mixed_precision`` becomes what runs:
the training loop, generation and pretraining all go through it. ``auto`` picks bf16 autocast
only where the device computes bf16 natively; elsewhere bf16 is emulated, and a CPU without
AVX512-BF16 or AMX (an AVX2-only EPYC, say) multiplies bf16 matrices ~50x slower than fp32
(issue 13: a 4096x512 @ 512x512 matmul took 31 ms in fp32, 1.68 s in bf16).

=====================  ==========  =============================================
device                 ``auto``    an explicit ``bf16``
=====================  ==========  =============================================
CUDA with bf16 (>=sm80) bf16        bf16
CUDA without bf16       fp16        bf16 (emulated: one warning)
CPU with native bf16    bf16        bf16
CPU without             no (fp32)   bf16 (emulated: one warning)
=====================  ==========  =============================================

``fp16`` on a GPU trains with loss scaling (accelerate's GradScaler); on a CPU it is refused for
training (no loss scaling there) and, for generation only, falls back to what ``auto`` picks.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "no")
_warned: set[str] = set()  # slow-precision warnings already given in this process


# -- probes ----------------------------------------------------------------------------------------

def cpu_features() -> dict:
    """The CPU's instruction-set flags as torch's cpuinfo sees them (``avx2``, ``avx512_bf16``,
    ``amx_bf16``, ARM ``bf16``, ...): ``torch.cpu.get_capabilities()`` where torch has it, else the
    older private probes, else Linux's /proc/cpuinfo flags."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    probes = {"avx2": "_is_avx2_supported", "avx512_f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    if all(hasattr(torch.cpu, fn) for fn in probes.values()):
        out = {k: bool(getattr(torch.cpu, fn)()) for k, fn in probes.items()}
        out["amx_bf16"] = out.pop("amx_tile")  # every AMX CPU so far has AMX-BF16 with its tiles
        return out
    flags = _proc_cpuinfo("flags") or _proc_cpuinfo("Features")
    return {f: True for f in flags.split()}


def native_bf16_cpu() -> bool:
    """True where the CPU multiplies bf16 in hardware: AVX512-BF16 or AMX-BF16 on x86, the BF16
    extension (BFMMLA) on ARM. Everywhere else torch converts to fp32 element by element."""
    f = cpu_features()
    return any(bool(f.get(k)) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def cuda_native_bf16(index: int = 0) -> bool:
    """True on a GPU with bf16 tensor cores (Ampere and later); older ones only emulate it."""
    import torch

    with torch.cuda.device(index):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no emulation flag: judge by compute capability
            return torch.cuda.get_device_capability(index) >= (8, 0)


def cpu_capability() -> str:
    """torch's vector ISA (``AVX2``, ``AVX512``, ``SVE256``, ...) plus the bf16 units it does not
    name: ``"AVX512 + AVX512-BF16"``, ``"AVX512 + AVX512-BF16 + AMX-BF16"``, ``"AVX2"``."""
    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    f = cpu_features()
    extra = [name for key, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"),
                                    ("bf16", "BF16"), ("sve_bf16", "SVE-BF16")) if f.get(key)]
    return " + ".join([isa, *extra])


def cpu_model() -> str:
    name = _proc_cpuinfo("model name") or cpu_features().get("cpu_name") or platform.processor()
    return name or platform.machine() or "unknown CPU"


def _proc_cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# -- memory, as the kernel counts it ---------------------------------------------------------------

def proc_kib_field(path: str, key: str):
    """Bytes of a ``key: N kB`` line of a Linux /proc file (``/proc/self/status``, ``/proc/meminfo``),
    or None where there is no such file or line."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (or since ``/proc/self/clear_refs`` was
    reset): the kernel's ``VmHWM``. Not ``getrusage().ru_maxrss``: Linux carries the parent's
    resident set at ``fork`` into the child's ``ru_maxrss`` across ``exec``, so every subprocess of
    a process holding 3 GiB would report at least 3 GiB. Falls back to ``ru_maxrss`` off Linux."""
    peak = proc_kib_field("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the one precision rule ------------------------------------------------------------------------

def resolve_precision(requested: str, device, *, training: bool = True) -> str:
    """``"bf16"``, ``"fp16"`` or ``"no"``: what autocast runs for ``requested`` on ``device``
    (a ``torch.device`` or its type, ``"cpu"``/``"cuda"``). See the module docstring's table."""
    from peftlab.errors import ConfigError

    if requested not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    index = getattr(device, "index", None) or 0
    if kind == "cuda":
        native = cuda_native_bf16(index)
        if requested == "auto":
            return "bf16" if native else "fp16"
        if requested == "bf16" and not native:
            _warn_once("cuda-bf16", "train.mixed_precision: bf16 on a GPU without bf16 tensor cores "
                       f"({_gpu_name(index)}): it is emulated and slow; set train.mixed_precision: auto "
                       "(fp16 with loss scaling there) or fp16")
        return requested
    if kind != "cpu":  # mps, xpu, ...: no rule of ours; explicit choices go to accelerate as they are
        return "no" if requested == "auto" else requested
    native = native_bf16_cpu()
    if requested == "auto":
        return "bf16" if native else "no"
    if requested == "fp16":
        if training:
            raise ConfigError("train.mixed_precision: fp16 autocast needs a GPU (loss scaling); "
                              "use auto, bf16 or no on CPU")
        return "bf16" if native else "no"  # re-scoring a GPU-trained fp16 run on a CPU
    if requested == "bf16" and not native:
        _warn_once("cpu-bf16", f"train.mixed_precision: bf16 on a CPU without native bf16 ({cpu_model()}, "
                   f"{cpu_capability()}: neither AVX512-BF16 nor AMX), so torch emulates it, ~50x slower than "
                   "fp32 for matrix products; set train.mixed_precision: auto (or no) to run in fp32 here")
    return requested


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("peftlab: warning: %s", message)


def _gpu_name(index: int = 0) -> str:
    import torch

    return torch.cuda.get_device_name(index)


# -- records ---------------------------------------------------------------------------------------

def device_name() -> str:
    """The GPU's name, or the CPU's model name and torch's thread count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def hardware() -> dict:
    """What every results file records about the machine: ``device`` (see ``device_name``), the
    CPU's ``cpu_capability`` and whether the device used (GPU, else CPU) has ``native_bf16``."""
    import torch

    cuda = torch.cuda.is_available()
    return {"device": device_name(), "cpu_capability": cpu_capability(),
            "native_bf16": cuda_native_bf16() if cuda else native_bf16_cpu()}


def versions() -> dict:
    import accelerate
    import torch
    import transformers

    import peftlab

    return {"peftlab": peftlab.__version__, "peftlab_commit": peftlab_commit(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


@functools.lru_cache(maxsize=None)
def peftlab_commit() -> str | None:
    """The commit of the peftlab checkout imported (``-dirty`` with uncommitted changes to tracked
    files), or None for an installed copy: only a checkout whose root holds ``.git`` is asked, so a
    virtual environment inside some other repository never reports that repository's commit. Asked
    once a process (the code it imported does not change under it)."""
    import subprocess

    import peftlab

    root = Path(peftlab.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def installed_version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def report() -> dict:
    """Everything ``peftlab env`` prints: what a bug report needs and what decides speed."""
    import torch

    from peftlab import native

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
    """Record the peftlab command line being run (``peftlab.cli.main`` calls this)."""
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
