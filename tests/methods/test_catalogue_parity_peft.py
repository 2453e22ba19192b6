"""VeRA, AdaLoRA, LoHa, LoKr, OFT and LN tuning against HF peft 0.21, computed live on one base with
the same values: logits and trainable counts, logits after one SGD step on each, merged weights, and
peft loading peftlab's export onto a fresh base (tolerance 1e-5 on logits, float32). AdaLoRA's rank
allocation is followed through a whole schedule beside peft's ``update_and_allocate``.
"""

from __future__ import annotations

import pytest
import torch

from peftlab.methods import peft_state
from peftlab.methods.adalora import AdaLoraConfig, SVDLinear
from peftlab.methods.ln_tuning import LNTuningConfig
from peftlab.methods.loha import LoHaConfig
from peftlab.methods.lokr import LoKrConfig, factorization
from peftlab.methods.oft import OFTConfig
from peftlab.methods.vera import VeraConfig, VeraLinear

from conftest import logits
from peft_pairs import (PREFIX, TARGETS, assert_forward_and_step_match, assert_merges_match,
                        assert_peft_loads_export, pair)

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
                                        "ignore:Unsupported layer type:UserWarning")

FAMILIES = pytest.mark.parametrize("family", ["t5", "llama"])


def make(method: str, family: str, **kw):
    """(peft config, our config, name table) of ``method`` on ``family``'s q and v (LN tuning: the norms)."""
    t = TARGETS[family]
    if method == "vera":
        return (peft.VeraConfig(r=4, target_modules=t), VeraConfig(r=4),
                {".vera_lambda_b": ".vera_lambda_b", ".vera_lambda_d": ".vera_lambda_d"})
    if method == "adalora":
        ours = {"delta_t" if k == "deltaT" else k: v for k, v in kw.items()}
        task = "SEQ_2_SEQ_LM" if family == "t5" else "CAUSAL_LM"  # peft adds its regulariser in that wrapper
        return (peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=6, target_modules=t, task_type=task,
                                   **kw),
                AdaLoraConfig(r=4, target_r=2, alpha=8, targets=("q", "v"), **ours),
                {".lora_A": ".lora_a", ".lora_E": ".lora_e", ".lora_B": ".lora_b"})
    if method == "loha":
        return (peft.LoHaConfig(r=2, alpha=4, target_modules=t), LoHaConfig(r=2, alpha=4),
                {f".hada_w{i}_{x}": f".hada_w{i}_{x}" for i in (1, 2) for x in "ab"})
    if method == "lokr":
        return (peft.LoKrConfig(r=2, alpha=4, target_modules=t, **kw), LoKrConfig(r=2, alpha=4, **kw),
                {f".lokr_w{s}": f".lokr_w{s}" for s in ("1", "1_a", "1_b", "2", "2_a", "2_b")})
    if method == "oft":
        terms = kw.get("num_cayley_neumann_terms", 5) if kw.get("use_cayley_neumann", True) else 0
        return (peft.OFTConfig(oft_block_size=8, target_modules=t, **kw), OFTConfig(block_size=8, neumann_terms=terms),
                {".oft_R.weight": ".oft_r"})
    assert method == "ln_tuning"
    return (peft.LNTuningConfig(), LNTuningConfig(),
            {".ln_tuning_layers.weight": ".weight", ".ln_tuning_layers.bias": ".bias"})


def method_pair(method: str, family: str, **kw):
    theirs_config, ours_config, names = make(method, family, **kw)
    keep = tuple(names) if method == "ln_tuning" else ()  # the gains: around 1
    # random values large enough that one step moves the outputs (LoHa's ΔW is a product of four factors)
    scale = {"oft": 0.05, "loha": 0.3}.get(method, 0.1)
    return pair(family, theirs_config, [ours_config], names, keep=keep, scale=scale)


CASES = [("vera", {}), ("adalora", {}), ("loha", {}), ("lokr", {}), ("lokr", {"decompose_both": True, "decompose_factor": 4}),
         ("oft", {}), ("oft", {"use_cayley_neumann": False}), ("oft", {"num_cayley_neumann_terms": 3}), ("ln_tuning", {})]
IDS = ["vera", "adalora", "loha", "lokr", "lokr-both-f4", "oft", "oft-exact", "oft-neumann3", "ln-tuning"]


@FAMILIES
@pytest.mark.parametrize("method, kw", CASES, ids=IDS)
def test_forward_and_step_match_peft(method, kw, family, request):
    theirs, ours = method_pair(method, family, **kw)
    batch = request.getfixturevalue(f"{family}_batch")
    if method == "adalora":  # peft adds the orthogonality term to the loss: compare the task loss alone
        theirs.peft_config["default"].orth_reg_weight = 0.0
    assert_forward_and_step_match(family, theirs, ours, batch)


@FAMILIES
@pytest.mark.parametrize("method, kw", CASES, ids=IDS)
def test_merged_weights_match_peft(method, kw, family, request):
    theirs, ours = method_pair(method, family, **kw)
    assert_merges_match(theirs, ours, request.getfixturevalue(f"{family}_batch"))


@FAMILIES
@pytest.mark.parametrize("method, kw", CASES, ids=IDS)
def test_peft_loads_the_export(method, kw, family, tmp_path, request):
    _, ours = method_pair(method, family, **kw)
    peft_type = {"ln_tuning": "LN_TUNING", "adalora": "ADALORA"}.get(method, method.upper())
    assert_peft_loads_export(family, ours, request.getfixturevalue(f"{family}_batch"), tmp_path, peft_type)


@FAMILIES
def test_vera_projections_are_peft_s_from_the_same_seed(family):
    theirs, ours = method_pair("vera", family)
    layer = next(m for m in ours.modules() if isinstance(m, VeraLinear))
    buffers = dict(theirs.named_buffers())
    torch.testing.assert_close(layer.projections.a, buffers[f"{PREFIX}{TARGET_OF[family]}.vera_A.default"], atol=0, rtol=0)
    torch.testing.assert_close(layer.projections.b, buffers[f"{PREFIX}{TARGET_OF[family]}.vera_B.default"], atol=0, rtol=0)


TARGET_OF = {"t5": "encoder.block.0.layer.0.SelfAttention.q", "llama": "model.layers.0.self_attn.q_proj"}


@pytest.mark.parametrize("dim", [1, 7, 12, 16, 32, 48, 64, 96, 127, 128, 256, 768, 1000])
@pytest.mark.parametrize("factor", [-1, 2, 4, 5, 8])
def test_lokr_factorization_is_peft_s(dim, factor):
    from peft.tuners.lokr.layer import factorization as peft_factorization

    assert factorization(dim, factor) == peft_factorization(dim, factor)


@FAMILIES
def test_adalora_allocation_follows_peft_step_by_step(family, request):
    """Six steps (T = 6, tinit 1, tfinal 2, every step an allocation): after each step and each
    ``update_and_allocate`` / ``after_step``, the same λ (masked in the same places) and the same logits;
    the final budget of target_r per layer is reached and kept. Both losses carry the regulariser."""
    batch = request.getfixturevalue(f"{family}_batch")
    theirs, ours = method_pair("adalora", family, tinit=1, tfinal=2, deltaT=1)
    hook = ours_config(ours).step_hook(ours)
    theirs_opt = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=0.5)
    ours_opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, SVDLinear)}
    theirs_params = dict(theirs.named_parameters())
    for step in range(6):
        for model, opt, extra in ((theirs, theirs_opt, None), (ours, ours_opt, hook.extra_loss)):
            model.train()
            loss = model(**batch).loss + (extra() if extra else 0)
            loss.backward()
            opt.step()
        theirs.base_model.update_and_allocate(step)
        hook.after_step(step, 6)
        theirs_opt.zero_grad()
        ours_opt.zero_grad()
        for name, m in layers.items():
            e = theirs_params[f"{PREFIX}{name}.lora_E.default"]
            assert torch.equal(m.lora_e == 0, e == 0), (step, name)
            torch.testing.assert_close(m.lora_e, e, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-4, rtol=0)
    kept = sum(int((m.lora_e != 0).sum()) for m in layers.values())
    assert kept == 2 * len(layers)  # target_r per layer, over all layers


def ours_config(model) -> AdaLoraConfig:
    return peft_state(model).configs[0]
