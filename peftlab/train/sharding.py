"""Fully sharded data parallel training (FSDP2: ``torch.distributed.fsdp.fully_shard``).

Each transformer block (the classes a Hugging Face model lists in ``_no_split_modules``) becomes
one FSDP unit, the rest of the model the root unit, so frozen base weights, trainable adapter
weights and optimizer moments are all split across processes. It runs on GPUs (NCCL) and on CPU
(gloo), which is how the tests check it: accelerate's own FSDP path is GPU-only.

The part PEFT users get wrong (accelerate PR #4206): under FSDP a parameter is a *shard*
(a DTensor), so saving ``named_parameters()`` from the main process writes one process's slice,
or nothing. Everything here that leaves the model goes through
``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True`` and
``ignore_frozen_params=True``: every process joins the gather, only the trainable (adapter)
tensors travel, and the main process receives them whole.
"""

from __future__ import annotations

import os

import torch

from peftlab.errors import ConfigError
from peftlab.models.quantize import is_quantized_model


def fsdp_requested(spec) -> bool:
    """``train.strategy: fsdp``, or a launch through ``accelerate launch --use_fsdp``."""
    return spec.strategy == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def block_classes(model: torch.nn.Module) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ConfigError(f"train.strategy: fsdp needs the model's transformer block classes; "
                          f"{type(model).__name__} declares none (_no_split_modules)")
    return classes


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place over every process (one unit per block, then the root)."""
    from torch.distributed.fsdp import fully_shard

    if is_quantized_model(model):
        raise ConfigError("train.strategy: fsdp cannot shard a 4-bit/8-bit base (bitsandbytes weights are not "
                          "shardable tensors); train a quantized base data-parallel (strategy: auto)")
    blocks = block_classes(model)
    for module in list(model.modules()):
        if type(module) in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable tensors by parameter name on the main process ({} elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    full = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    # aliases of tied weights (T5's encoder.embed_tokens = shared) come along; keep parameter names
    return {n: t.contiguous() for n, t in full.items() if n in trainable}


def gather_optimizer(model: torch.nn.Module, optimizer) -> dict[str, dict]:
    """Full optimizer state per parameter name on the main process ({} elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, _inner(optimizer), options=_options(cpu_offload=True))
    return dict(full.get("state", {}))


def load_sharded(model: torch.nn.Module, optimizer, weights: dict, per_param: dict) -> None:
    """Scatter full trainable tensors (and optimizer moments) read on every process. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, weights, options=_options(strict=False))
    if optimizer is not None:
        groups = get_optimizer_state_dict(model, _inner(optimizer), options=_options())["param_groups"]
        set_optimizer_state_dict(model, _inner(optimizer), {"state": per_param, "param_groups": groups},
                                 options=_options())


def _inner(optimizer):
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    return optimizer
