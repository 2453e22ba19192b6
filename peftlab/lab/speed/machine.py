"""What a speed figure was measured on: CPU model and vector capability (AVX2 / AVX512 / AMX,
native bf16) or GPU, thread count, library versions and the peftlab commit."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, flags


def cpu_info() -> dict:
    import torch

    name, flags = _cpuinfo()
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = None
    return {
        "model": name,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),  # what ATen dispatches to
        "flags": {f: f in flags for f in _FLAGS},
        "native_bf16": native_bf16,  # oneDNN has bf16 kernels (else bf16 is emulated, ~50x slower)
    }


def gpu_info() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(), "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}


def versions() -> dict:
    from peftlab.provenance import installed_version, versions as base_versions

    # from the package's metadata: importing peft for its version imports bitsandbytes, and its noise
    return {**base_versions(), "peft": installed_version("peft")}


def describe(device) -> dict:
    """The ``machine`` block of a results file."""
    from peftlab.kernels import native

    gpu = gpu_info() if device.type == "cuda" else None
    return {"device": device.type, "cpu": cpu_info(), "gpu": gpu, "versions": versions(),
            "platform": platform.platform(), "native_kernels": native.status()}


def short(machine: dict) -> str:
    """One line for a table caption: the GPU, or the CPU with its capability and thread count."""
    if machine.get("gpu"):
        g = machine["gpu"]
        return f"{g['name']} (compute {g['capability']}), torch {machine['versions']['torch']}"
    c = machine["cpu"]
    extras = [f for f in ("avx512_bf16", "amx_bf16") if c["flags"].get(f)]
    bf16 = "native bf16" if c["native_bf16"] else "no native bf16"
    return (f"{c['model']}, {c['torch_threads']} threads, {c['torch_capability']}"
            f"{' + ' + '/'.join(extras) if extras else ''} ({bf16}), torch {machine['versions']['torch']}")
