"""What decides speed, and where a result was measured: device, CPU features, precision, versions.

``resolve_precision`` is the one place where a requested ``mixed_precision`` becomes what runs:
the training loop, generation and pretraining all go through it. ``auto`` picks bf16 autocast
only where the device computes bf16 natively; elsewhere bf16 is emulated, and a CPU without
AVX512-BF16 or AMX (an AVX2-only EPYC, say) multiplies bf16 matrices ~50x slower than fp32
(on an AVX2-only EPYC a 4096x512 @ 512x512 matmul takes 31 ms in fp32, 1.68 s in bf16).

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

import logging
import platform
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


