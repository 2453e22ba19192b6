"""DoRA, PiSSA / OLoRA and LoRA+ against HF peft 0.21, computed live on one base with the same values:
logits and trainable counts, logits after one SGD step on each (the gradients agree), merged weights,
and peft loading peftlab's export onto a fresh base. Tolerance 1e-5 on logits (float32; PiSSA's
residual is W x − s B₀A₀ x here and (W − s B₀A₀) x in peft: ~1e-6 apart on T5's larger logits).

peft's ``use_dora`` (``lora_magnitude_vector``), ``init_lora_weights="pissa"|"olora"`` (the residual
written into W) and ``create_loraplus_optimizer`` are the references.
"""

from __future__ import annotations

import pytest
import torch

from peftlab.methods import apply_methods
from peftlab.methods.dora import DoraConfig
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.schema import TrainSpec
from peftlab.train.optim import make_optimizer

from conftest import logits
from peft_pairs import (BUILD, PREFIX, TARGETS, assert_forward_and_step_match, assert_merges_match,
                        assert_peft_loads_export, pair)

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

LORA = {".lora_A.weight": ".lora_a", ".lora_B.weight": ".lora_b"}
DORA = {**LORA, ".lora_magnitude_vector.weight": ".magnitude"}
FAMILIES = pytest.mark.parametrize("family", ["t5", "llama"])


def dora_pair(family, rslora=False):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family], use_dora=True, use_rslora=rslora)
    return pair(family, config, [DoraConfig(r=4, alpha=8, rslora=rslora)], DORA, keep=(".lora_magnitude_vector.weight",))


@FAMILIES
@pytest.mark.parametrize("rslora", [False, True], ids=["dora", "dora-rslora"])
def test_dora_forward_and_step_match_peft(family, rslora, request):
    theirs, ours = dora_pair(family, rslora)
    assert_forward_and_step_match(family, theirs, ours, request.getfixturevalue(f"{family}_batch"))


@FAMILIES
def test_dora_norm_is_a_constant_to_the_gradient(family, request):
    """§4.3: ‖W + ΔW‖_c gets no gradient, so B's is (m / ‖·‖ ⊙ g)ᵀ (s A x) exactly, as if the norm were
    a number (with the norm in the graph, B's gradient would have a second term)."""
    batch = request.getfixturevalue(f"{family}_batch")
    _, ours = dora_pair(family)
    layer = next(m for m in ours.modules() if isinstance(m, LoraLinear))
    seen = {}
    layer.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    loss = ours(**batch).loss
    (g,) = torch.autograd.grad(loss, seen["out"], retain_graph=True)  # dL/dh at that layer
    loss.backward()
    scale = (layer.magnitude / layer.column_norm()).detach()
    g2, x2 = g.reshape(-1, g.shape[-1]), seen["x"].reshape(-1, seen["x"].shape[-1])
    expected = layer.scaling * (scale * g2).T @ (x2 @ layer.lora_a.T)  # (out, r)
    torch.testing.assert_close(layer.lora_b.grad, expected, atol=1e-6, rtol=1e-4)


@FAMILIES
def test_dora_merges_and_exports_as_peft(family, tmp_path, request):
    batch = request.getfixturevalue(f"{family}_batch")
    _, ours = dora_pair(family)
    config = assert_peft_loads_export(family, ours, batch, tmp_path, "LORA")
    assert config["use_dora"] is True
    theirs, ours = dora_pair(family)
    assert_merges_match(theirs, ours, batch)


@FAMILIES
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_olora_start_where_peft_does(family, init, request):
    """The same factors from the same W (peft's SVD / QR), and the model starts as the base model."""
    batch = request.getfixturevalue(f"{family}_batch")
    base = BUILD[family]()
    theirs = peft.get_peft_model(BUILD[family](), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family],
                                                                  init_lora_weights=init))
    apply_methods(base, [LoraConfig(r=4, alpha=8, init=init)])
    torch.testing.assert_close(logits(base, batch), logits(BUILD[family](), batch), atol=1e-5, rtol=0)
    params = dict(theirs.named_parameters())
    for name, m in base.named_modules():
        if isinstance(m, LoraLinear):
            a, b = params[f"{PREFIX}{name}.lora_A.default.weight"], params[f"{PREFIX}{name}.lora_B.default.weight"]
            torch.testing.assert_close(m.lora_a0, a, atol=1e-6, rtol=0)  # (r, in)
            torch.testing.assert_close(m.lora_b0, b, atol=1e-6, rtol=0)  # (out, r)
            # peft's residual base weight is W − s B₀A₀: the same function as ours
            torch.testing.assert_close(params[f"{PREFIX}{name}.base_layer.weight"],
                                       m.weight - m.scaling * m.lora_b0 @ m.lora_a0, atol=1e-6, rtol=0)


@FAMILIES
@pytest.mark.parametrize("init, rslora", [("pissa", False), ("olora", False), ("pissa", True)])
def test_pissa_olora_train_merge_and_export_as_peft(family, init, rslora, tmp_path, request):
    batch = request.getfixturevalue(f"{family}_batch")

    def make():
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family], init_lora_weights=init,
                                 use_rslora=rslora)
        return pair(family, config, [LoraConfig(r=4, alpha=8, init=init, rslora=rslora)], LORA)

    theirs, ours = make()
    assert_forward_and_step_match(family, theirs, ours, batch)
    # export: peft's own PiSSA/OLoRA -> LoRA conversion (rank 2r on the untouched W)
    config = assert_peft_loads_export(family, ours, batch, tmp_path, "LORA")
    assert config["r"] == 8 and config["lora_alpha"] == pytest.approx(8 * (2 ** 0.5 if rslora else 2))
    theirs, ours = make()
    assert_merges_match(theirs, ours, batch)


@FAMILIES
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_loraplus_optimizer_steps_as_peft(family, method, request):
    """``train.loraplus_ratio`` groups B (and DoRA's magnitude) at ratio × lr, as
    ``create_loraplus_optimizer``; one AdamW step on the same gradients lands on the same weights."""
    from peft.optimizers import create_loraplus_optimizer

    batch = request.getfixturevalue(f"{family}_batch")
    if method == "dora":
        theirs, ours = dora_pair(family)
    else:
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family])
        theirs, ours = pair(family, config, [LoraConfig(r=4, alpha=8)], LORA)
    spec = TrainSpec(lr=1e-3, loraplus_ratio=16.0, weight_decay=0.0)
    mine = make_optimizer([p for p in ours.parameters() if p.requires_grad], spec, torch.device("cpu"), ours)
    ref = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0)
    names = {id(p): n for n, p in ours.named_parameters()}
    fast = {names[id(p)] for g in mine.param_groups if g["lr_scale"] == 16.0 for p in g["params"]}
    assert fast == {n for n in names.values() if n.endswith((".lora_b", ".magnitude"))}
    for model, opt in ((theirs, ref), (ours, mine)):
        model.train()
        model(**batch).loss.backward()
        opt.step()
        model.eval()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=0)


@FAMILIES
def test_dora_on_pissa_exports_as_peft_dora_on_the_converted_lora(family, tmp_path, request):
    """DoRA's direction on PiSSA's residual: peft loads it as DoRA over the rank-2r LoRA on the untouched W."""
    batch = request.getfixturevalue(f"{family}_batch")
    ours = BUILD[family]()
    apply_methods(ours, [DoraConfig(r=4, alpha=8, init="pissa")])
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LoraLinear):
                m.lora_b.add_(torch.randn_like(m.lora_b) * 0.1)
                m.magnitude.mul_(1.1)
    config = assert_peft_loads_export(family, ours, batch, tmp_path, "LORA")
    assert config["use_dora"] is True and config["r"] == 8
