"""The catalogue's own behaviour beyond the contract table: merge/unmerge of every new wrapper, what
PiSSA's and VeRA's adapter files hold, BitFit's added and own biases, LN tuning's no-op merge,
OFT's rotations, and the configs' validation."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from peftlab.config import from_dict
from peftlab.errors import ConfigError, ModelError
from peftlab.methods import MethodConfig, apply_methods, peft_state
from peftlab.methods.adalora import AdaLoraConfig
from peftlab.methods.bitfit import AddedBias, BitFitConfig
from peftlab.methods.dora import DoraConfig
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.hooks.weight_delta import WeightLinear
from peftlab.methods.io import WEIGHTS, load_adapter, save_adapter
from peftlab.methods.ln_tuning import LNTuningConfig
from peftlab.methods.loha import LoHaConfig
from peftlab.methods.lokr import LoKrConfig
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.methods.oft import OFTConfig, OFTLinear, cayley
from peftlab.methods.vera import VeraConfig

from conftest import build_gpt2, build_t5, logits
from test_contract import BASE, CATALOGUE, cases, train_steps

MERGEABLE = [c for c in CATALOGUE if not any(k in c.counts for k in ("bitfit", "prefix"))]


@pytest.fixture
def batches(t5_batch, llama_batch):
    return {"t5": t5_batch, "llama": llama_batch}


@cases(MERGEABLE)
def test_merge_equals_unmerged_and_unmerge_gives_the_base_back(case, batches):
    batch = batches[case.family]
    model = case.build()
    trained = set(case.apply(model).trainable_names())
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trained}
    train_steps(model, batch)
    unmerged = logits(model, batch)
    mods = [m for m in model.modules() if isinstance(m, (WeightLinear, LoraLinear))]
    for m in mods:
        m.merge()
        m.merge()  # twice is a no-op
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)
    for m in mods:
        m.unmerge()
    params = dict(model.named_parameters())
    for n, w in base.items():
        torch.testing.assert_close(params[n], w, atol=1e-5, rtol=1e-5, msg=n)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)
    merged = merged_model(model)  # the plain transformers model, same outputs
    assert not any(isinstance(m, (WeightLinear, LoraLinear)) for m in merged.modules())
    torch.testing.assert_close(logits(merged, batch), unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_adapter_holds_its_initial_factors_and_reloads_exactly(init, t5_batch, tmp_path, monkeypatch):
    """A fresh base whose decomposition came out otherwise (another LAPACK) still reloads the trained
    model bit for bit: the residual is W − s B₀A₀ with B₀, A₀ from the file."""
    import peftlab.methods.lora as lora

    model = build_t5()
    apply_methods(model, [LoraConfig(r=4, init=init)])
    train_steps(model, t5_batch)
    trained = logits(model, t5_batch)
    save_adapter(model, tmp_path, base_model=BASE)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        keys = set(f.keys())
    assert {k.rsplit(".", 1)[-1] for k in keys} == {"lora_a", "lora_b", "lora_a0", "lora_b0"}
    real = lora.principal_factors
    monkeypatch.setattr(lora, "principal_factors", lambda *a: tuple(t * 1.01 for t in real(*a)))
    fresh = build_t5()
    load_adapter(fresh, tmp_path, base_model=BASE)
    torch.testing.assert_close(logits(fresh, t5_batch), trained, atol=0, rtol=0)


def test_pissa_refuses_a_rank_above_the_layer_s():
    with pytest.raises(ModelError, match=r"init pissa needs r <= min\(in, out\) = 32, got r=40"):
        apply_methods(build_t5(), [LoraConfig(r=40, init="pissa")])


def test_vera_saves_its_shared_pair_once(t5_batch, tmp_path):
    model = build_t5()
    state = apply_methods(model, [VeraConfig(r=4, targets=("q", "v", "wo"))])
    save_adapter(model, tmp_path, base_model=BASE)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        pair = {k: f.get_tensor(k).shape for k in f.keys() if k not in state.trainable_names()}
    assert sorted(pair.values()) == [(4, 64), (32, 4)]  # A: r x in_max (wo reads 64), B: out_max x r


def test_bitfit_adds_biases_on_t5_and_trains_gpt2_s_own():
    t5 = build_t5()
    apply_methods(t5, [BitFitConfig()])
    names = peft_state(t5).trainable_names()
    assert names and all(n.endswith(".added_bias") for n in names)
    assert all(isinstance(m, AddedBias) for n, m in t5.named_modules() if n.endswith((".q", ".wo")))
    gpt2 = build_gpt2()
    apply_methods(gpt2, [BitFitConfig()])
    names = peft_state(gpt2).trainable_names()
    assert names and all(n.endswith(".bias") for n in names)  # Conv1D and LayerNorm biases, in place
    assert "transformer.ln_f.bias" in names and not any(isinstance(m, AddedBias) for m in gpt2.modules())


def test_bitfit_refuses_what_it_cannot_do():
    with pytest.raises(ModelError, match="have no biases.*add: true adds them"):
        apply_methods(build_t5(), [BitFitConfig(add=False)])
    t5 = build_t5()
    apply_methods(t5, [BitFitConfig()])
    with pytest.raises(ModelError, match="bitfit: it adds biases"):
        merged_model(t5)
    with pytest.raises(ModelError, match="HF peft has no form of bitfit"):
        export_peft(t5, "unused", "tiny")


def test_bitfit_without_added_biases_merges_as_trained(llama_batch):
    gpt2 = build_gpt2()
    apply_methods(gpt2, [BitFitConfig(add=False)])
    train_steps(gpt2, llama_batch)
    trained = logits(gpt2, llama_batch)
    torch.testing.assert_close(logits(merged_model(gpt2), llama_batch), trained, atol=0, rtol=0)


def test_ln_tuning_trains_the_norms_in_place(t5_batch):
    model = build_t5()
    state = apply_methods(model, [LNTuningConfig()])
    assert all(n.endswith("layer_norm.weight") for n in state.trainable_names())
    train_steps(model, t5_batch)
    trained = logits(model, t5_batch)
    torch.testing.assert_close(logits(merged_model(model), t5_batch), trained, atol=0, rtol=0)


def test_oft_exact_cayley_is_orthogonal_and_the_series_is_close():
    q = torch.randn(3, 5, 5) * 0.05
    q = q - q.transpose(-2, -1)
    r = cayley(q, 0)
    torch.testing.assert_close(r @ r.transpose(-2, -1), torch.eye(5).expand(3, 5, 5), atol=1e-6, rtol=0)
    # the series runs Q -> -Q, truncated after Q^7 (its last term halved): ~|Q|^7 off
    torch.testing.assert_close(cayley(q, 8), r.transpose(-2, -1), atol=1e-4, rtol=0)


def test_oft_refuses_a_block_size_that_does_not_divide():
    with pytest.raises(ModelError, match="block_size 5 does not divide the input width 32"):
        apply_methods(build_t5(), [OFTConfig(block_size=5)])


def test_oft_rotation_keeps_neuron_angles(t5_batch):
    """Rotating W's input side keeps the Gram matrix of W's rows (the paper's hyperspherical energy)."""
    model = build_t5()
    apply_methods(model, [OFTConfig(block_size=8, neumann_terms=0)])
    layer = next(m for m in model.modules() if isinstance(m, OFTLinear))
    with torch.no_grad():
        layer.oft_r.normal_(std=0.3)
    w = layer.weight.detach().clone()
    rotated = layer.merged_weight(w)
    assert (rotated - w).abs().max() > 1e-2
    torch.testing.assert_close(rotated @ rotated.T, w @ w.T, atol=1e-5, rtol=1e-5)


def test_a_layer_takes_one_wrapper():
    with pytest.raises(ModelError, match=r"loha: .*SelfAttention.q is already wrapped \(VeraLinear\)"):
        apply_methods(build_t5(), [VeraConfig(r=4), LoHaConfig(r=2)])
    with pytest.raises(ModelError, match=r"dora: .*SelfAttention.q is already wrapped \(OFTLinear\)"):
        apply_methods(build_t5(), [OFTConfig(block_size=8), DoraConfig(r=2)])


@pytest.mark.parametrize("cfg", [DoraConfig(r=4, init="olora"), LoraConfig(init="pissa", rslora=True),
                                 VeraConfig(r=16, targets=("q", "k"), d_initial=0.2, projection_seed=3),
                                 AdaLoraConfig(r=6, target_r=3, tinit=5, tfinal=5, delta_t=2, total_step=100),
                                 LoHaConfig(r=4, alpha=2.0), LoKrConfig(decompose_both=True, decompose_factor=8),
                                 OFTConfig(block_size=16, neumann_terms=0), BitFitConfig(add=False, norms=False),
                                 LNTuningConfig()])
def test_config_round_trips_through_to_dict(cfg):
    assert from_dict(MethodConfig, cfg.to_dict()) == cfg


@pytest.mark.parametrize("data, match", [
    ({"name": "lora", "init": "svd"}, "init"),
    ({"name": "dora", "r": 0}, "r must be >= 1"),
    ({"name": "vera", "targets": "q"}, "targets"),
    ({"name": "adalora", "r": 4, "target_r": 8}, r"target_r \(8\) must be <= r \(4\)"),
    ({"name": "adalora", "beta1": 1.0}, "beta1"),
    ({"name": "lokr", "decompose_factor": 0}, "decompose_factor"),
    ({"name": "oft", "block_size": 1}, "block_size"),
    ({"name": "oft", "neumann_terms": -1}, "neumann_terms"),
    ({"name": "loha", "alpha": 0}, "alpha"),
])
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(MethodConfig, data)
