"""Where a result was measured: the device and the library versions, for every results file."""

from __future__ import annotations

import platform
from pathlib import Path


def device_name() -> str:
    """The GPU's name, or the CPU's model name and torch's thread count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} threads"


def versions() -> dict:
    import accelerate
    import torch
    import transformers

    import peftlab

    return {"peftlab": peftlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}
