"""A frozen base in 4-bit (NF4/FP4) or 8-bit through bitsandbytes, as in QLoRA.

transformers quantizes the linear layers while loading (``BitsAndBytesConfig``); peftlab's methods
then wrap the quantized layers (LoRA calls them as ``base_layer``). bitsandbytes >= 0.49 runs on
CPU as well as CUDA, so the same path is tested here.
"""

from __future__ import annotations

import os

from peftlab.errors import ModelError


def quantization_config(spec, dtype):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantize`` (None when not quantized)."""
    if spec.quantize == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(f"model.quantize: {spec.quantize} needs bitsandbytes: pip install 'peftlab[quant]'") from None
    from transformers import BitsAndBytesConfig

    if spec.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.quant_type,
                              bnb_4bit_use_double_quant=spec.double_quant, bnb_4bit_compute_dtype=dtype)


def quantized_device() -> str:
    """Where a quantized base is placed at load time (it cannot be moved afterwards): this
    process's GPU under a multi-process launch, else the first GPU, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def is_quantized_model(model) -> bool:
    """Loaded with a bitsandbytes quantization config (its linears are 4-bit/8-bit)."""
    return getattr(model, "hf_quantizer", None) is not None


def keep_trainable(model) -> None:
    """Undo and forbid bitsandbytes' CPU inference packing of 4-bit weights.

    On a CPU with AVX512-BF16, a ``Linear4bit`` called in eval mode without grad repacks its
    weight for a fast inference kernel *permanently*, and that kernel has no backward: training
    after any evaluation would then silently get no gradients. Called when methods are applied.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse as unpack
    except ImportError:  # a bitsandbytes without the CPU packing has nothing to undo
        return
    for module in model.modules():
        if type(module).__name__ != "Linear4bit" or not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            weight.data, weight.quant_state = unpack(weight.data, weight.quant_state)
