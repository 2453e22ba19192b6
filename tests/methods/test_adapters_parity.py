"""Bottleneck adapters against AdapterHub ``adapters`` 1.3: same base, same adapter weights, same logits.

``adapters`` pins transformers ~=4.57, so its outputs were computed once in a throw-away venv by
``tests/fixtures/adapters_ref/make_fixtures.py`` (its README has the command) and stored with the
base weights, inputs and adapter weights. Here the same base is built in transformers 5, peftlab's
method is applied, the adapter weights are copied in, and the logits must match to 1e-5 (float32;
the two transformers versions agree on the base model to ~1e-6, checked first).

Name mapping (AdapterHub -> peftlab), for a sub-layer whose residual branch lives in module P:
  T5 (P = ``<stack>.block.i.layer.j``):  ``P.adapters.<name>.X``              -> ``P.<method>_<kind>.Y``
  LLaMA (P = ``model.layers.i``):        ``P.attention_adapters.adapters.<name>.X`` (kind self),
                                         ``P.output_adapters.adapters.<name>.X``    (kind ffn)
  X -> Y: ``adapter_down.0`` (``adapter_down.1`` with ln_before) -> ``down``, ``adapter_up`` -> ``up``,
          ``adapter_norm_before`` -> ``ln_before``, ``adapter_norm_after`` -> ``ln_after``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.methods import apply_methods
from peftlab.methods.hooks.bottleneck import BottleneckAdapter
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.parallel import ParallelAdapterConfig
from peftlab.methods.pfeiffer import PfeifferConfig

from conftest import logits

FIXTURES = Path(__file__).parents[1] / "fixtures" / "adapters_ref"
META = json.loads((FIXTURES / "cases.json").read_text())
ATOL = 1e-5

# fixture case -> the peftlab config that means the same (checked against the stored config below)
CASES = {
    "t5_houlsby": HoulsbyConfig(),
    "t5_houlsby_ln_cross": HoulsbyConfig(ln_before=True, ln_after=True, sublayers=("self", "cross", "ffn"),
                                         nonlinearity="gelu", reduction_factor=8),
    "t5_pfeiffer": PfeifferConfig(),
    "t5_pfeiffer_drop1": PfeifferConfig(drop_lowest=1),
    "t5_parallel": ParallelAdapterConfig(),
    "t5_parallel_attn": ParallelAdapterConfig(sublayers=("self", "ffn"), reduction_factor=4, scaling=2.0),
    "llama_houlsby": HoulsbyConfig(),
    "llama_pfeiffer": PfeifferConfig(),
    "llama_pfeiffer_drop1": PfeifferConfig(drop_lowest=1),
    "llama_parallel": ParallelAdapterConfig(),
}
PLACEMENT = {"houlsby": (False, False), "pfeiffer": (True, False), "parallel": (False, True)}  # ln_before, parallel
TIED = {"t5": {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}, "llama": set()}


def build_base(family: str):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    config = META["configs"][family]
    model = (T5ForConditionalGeneration(T5Config(**config)) if family == "t5"
             else LlamaForCausalLM(LlamaConfig(**config))).eval()
    stored = load_file(FIXTURES / f"base_{family}.safetensors")
    weights = {k[len("base."):]: v for k, v in stored.items() if k.startswith("base.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= TIED[family], (missing, unexpected)
    batch = {k[len("input."):]: v for k, v in stored.items() if k.startswith("input.")}
    return model, batch, stored["logits"]


def hub_prefix(family: str, name: str, case: str) -> str:
    """AdapterHub's parameter prefix for the peftlab adapter module called ``name``."""
    parent, _, attr = name.rpartition(".")
    kind = attr.split("_", 1)[1]
    if family == "t5":
        return f"{parent}.adapters.{case}."
    return f"{parent}.{'attention_adapters' if kind == 'self' else 'output_adapters'}.adapters.{case}."


def hub_weights(model, family: str, case: str) -> dict[str, torch.Tensor]:
    """peftlab parameter name -> AdapterHub parameter name, for every adapter in ``model``."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, BottleneckAdapter):
            continue
        pre = hub_prefix(family, name, case)
        down = "adapter_down.1" if module.ln_before is not None else "adapter_down.0"
        parts = {"down": down, "up": "adapter_up", "ln_before": "adapter_norm_before", "ln_after": "adapter_norm_after"}
        for pname, _ in module.named_parameters():
            sub, _, leaf = pname.rpartition(".")
            out[f"{name}.{pname}"] = f"{pre}{parts[sub]}.{leaf}"
    return out


def check_config_matches(case: str, cfg) -> None:
    hub = META["cases"][case]["config"]
    family = META["cases"][case]["family"]
    n_layers = META["configs"][family].get("num_layers", META["configs"][family].get("num_hidden_layers"))
    assert (hub["original_ln_before"], hub["is_parallel"]) == PLACEMENT[cfg.name]
    assert hub["original_ln_after"] and hub["residual_before_ln"] is True and not hub["adapter_residual_before_ln"]
    assert hub["reduction_factor"] == cfg.reduction_factor and hub["non_linearity"] == cfg.nonlinearity
    assert hub["scaling"] == cfg.scaling and (hub["ln_before"], hub["ln_after"]) == (cfg.ln_before, cfg.ln_after)
    kinds = {k for k, on in (("self", "mh_adapter"), ("cross", "cross_adapter"), ("ffn", "output_adapter")) if hub[on]}
    assert kinds == set(cfg.sublayers)
    stacks = 2 if family == "t5" else 1  # T5 numbers decoder blocks after the encoder's
    dropped = {s * n_layers + i for s in range(stacks) for i in range(cfg.drop_lowest)}
    assert set(hub["leave_out"]) == dropped


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_adapterhub(case):
    family, cfg = META["cases"][case]["family"], CASES[case]
    check_config_matches(case, cfg)
    model, batch, base_logits = build_base(family)
    torch.testing.assert_close(logits(model, batch), base_logits, atol=ATOL, rtol=0)

    state = apply_methods(model, [cfg])
    hub = {k[len("adapter."):]: v for k, v in load_file(FIXTURES / f"{case}.safetensors").items()
           if k.startswith("adapter.")}
    mapping = hub_weights(model, family, case)
    assert sorted(mapping.values()) == sorted(hub), "peftlab and AdapterHub placed different adapters"
    assert state.trainable_params(model) == sum(v.numel() for v in hub.values())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in mapping.items():
            params[ours].copy_(hub[theirs])
    expected = load_file(FIXTURES / f"{case}.safetensors")["logits"]
    assert (expected - base_logits).abs().max() > 1e-2, "the reference adapter did not change the outputs"
    torch.testing.assert_close(logits(model, batch), expected, atol=ATOL, rtol=0)
