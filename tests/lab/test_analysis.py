"""`peftlab analyze`: LoRA subspace similarity on matrices whose answer is known, and per-layer
adapter importance on a tiny trained run."""

import json
import math

import pytest
import torch

from peftlab.lab.analysis.layers import block_adapter_params, layer_importance
from peftlab.lab.analysis.subspace import phi, phi_grid, right_singular
from peftlab.lab.cli import main
from peftlab.errors import ModelError
from tiny_runs import make_data, train

S = 1 / math.sqrt(2)


def test_identical_subspaces_give_one_everywhere():
    a = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(phi_grid(a, a), torch.ones(4, 4, dtype=torch.float64), atol=1e-12)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    # another basis of the same row space (rotated and rescaled rows): the whole spans coincide
    assert phi_grid(a, 3 * q @ a)[-1, -1] == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_give_zero():
    g = torch.Generator().manual_seed(2)
    a1 = torch.cat([torch.randn(3, 4, generator=g), torch.zeros(3, 4)], dim=1)  # rows in span(e1..e4)
    a2 = torch.cat([torch.zeros(2, 4), torch.randn(2, 4, generator=g)], dim=1)  # rows in span(e5..e8)
    assert torch.allclose(phi_grid(a1, a2), torch.zeros(3, 2, dtype=torch.float64), atol=1e-12)


def test_a_mixed_case_by_hand():
    # A1 = diag(2, 1) on e1, e2: right-singular vectors e1 (σ=2), e2 (σ=1)
    a1 = torch.tensor([[2.0, 0, 0], [0, 1, 0]], dtype=torch.float64)
    # A2: top direction (e2 + e3)/√2 (σ=3), then e1 (σ=1)
    a2 = torch.tensor([[0, 3 * S, 3 * S], [1.0, 0, 0]], dtype=torch.float64)
    grid = phi_grid(a1, a2)
    # φ(1,1) = (e1·v)² = 0; φ(1,2) = ((e1·v)² + (e1·e1)²)/1 = 1; φ(2,1) = ((e1·v)² + (e2·v)²)/1 = ½;
    # φ(2,2) = (0 + 1 + ½ + 0)/2 = ¾
    assert grid.flatten().tolist() == pytest.approx([0.0, 1.0, 0.5, 0.75], abs=1e-12)
    v1, v2 = right_singular(a1), right_singular(a2)
    assert [phi(v1, v2, i, j) for i, j in ((1, 1), (2, 2))] == pytest.approx([0.0, 0.75], abs=1e-12)
    with pytest.raises(ValueError, match="outside"):
        phi(v1, v2, 3, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny code->doc runs on one base (seed 0): LoRA r=4 and r=2 on q, v."""
    root = tmp_path_factory.mktemp("analysis")
    data = make_data(root / "data")
    out = {}
    for r in (4, 2):
        out[r] = root / f"lora{r}"
        assert train(out[r], data, f"methods=[{{name: lora, r: {r}}}]", "train.mixed_precision=no") == 0
    return out


def test_lora_subspace_of_two_runs(runs, tmp_path, capsys):
    assert main(["analyze", "lora-subspace", str(runs[4]), str(runs[4]), "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "subspace.json").read_text())["layers"]
    # tiny T5: LoRA on q, v of the encoder's self-attention and the decoder's self- and cross-attention
    assert len(same) == 6 and all(r["phi_1_1"] == pytest.approx(1) and r["phi_k_k"] == pytest.approx(1) for r in same)
    assert main(["analyze", "lora-subspace", str(runs[4]), str(runs[2]), "--out", str(tmp_path / "ab")]) == 0
    rows = json.loads((tmp_path / "ab" / "subspace.json").read_text())["layers"]
    assert {(r["r_a"], r["r_b"], r["k"]) for r in rows} == {(4, 2, 2)} and all(len(r["grid"]) == 4 for r in rows)
    assert all(0 <= x <= 1 + 1e-9 for r in rows for line in r["grid"] for x in line)
    assert (tmp_path / "ab" / "subspace.png").stat().st_size > 1000
    assert "| Layer | r (a) | r (b) | φ(1, 1) |" in capsys.readouterr().out


def test_lora_subspace_needs_lora(tmp_path):
    run = tmp_path / "ia3"
    assert train(run, make_data(tmp_path / "d"), "methods=[{name: ia3}]", "train.mixed_precision=no") == 0
    with pytest.raises(ModelError, match="no LoRA layer"):
        from peftlab.lab.analysis.subspace import compare_runs

        compare_runs(run, run)


def test_block_adapter_params_by_hand(tiny_t5):
    from peftlab.methods import apply_methods
    from peftlab.methods.lora import LoraConfig
    from peftlab.models.arch import family_of

    model = tiny_t5()  # d_model 32, 4 heads of 8 (inner 32), 2 + 2 blocks
    apply_methods(model, [LoraConfig(r=4, targets=("q", "v"))])
    groups = block_adapter_params(model, family_of(model))
    per_target = 4 * (32 + 32)  # A: r × in, B: out × r
    assert [(s, i, sum(p.numel() for p in params.values())) for s, i, params in groups] == [
        ("encoder", 0, 2 * per_target), ("encoder", 1, 2 * per_target),
        ("decoder", 0, 4 * per_target), ("decoder", 1, 4 * per_target)]  # decoder: self + cross


def test_layer_importance_of_a_tiny_run(runs, tmp_path, capsys):
    run = runs[4]
    assert main(["analyze", "layer-importance", str(run), "--out", str(tmp_path / "li")]) == 0
    result = json.loads((tmp_path / "li" / "layer_importance.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    # scored as the run was: the same rows and decoding give the run's own score
    assert result["baseline"] == {"code2doc": pytest.approx(metrics["codexglue_bleu"])}
    # 1-layer T5 (d_model 16, inner 8): encoder q, v = 2 · 4 · (16 + 8); the decoder adds cross q, v
    layers = [(r["stack"], r["layer"], r["params"]) for r in result["layers"]]
    assert layers == [("encoder", 0, 192), ("decoder", 0, 384)]
    for r in result["layers"]:
        assert r["drop"]["code2doc"] == pytest.approx(result["baseline"]["code2doc"] - r["scores"]["code2doc"])
    assert (tmp_path / "li" / "layer_importance.png").stat().st_size > 1000
    assert "| encoder | 0 | 192 |" in capsys.readouterr().out
    # for LoRA, back to its init (B = 0) and all-zero are the same removal: ΔW = 0 either way
    zero = layer_importance(run, mode="zero")
    assert [r["scores"] for r in zero["layers"]] == [r["scores"] for r in result["layers"]]


def test_layer_reset_is_removal_for_lora(runs):
    """Reset to init puts B back to 0: every block reset gives the base model's outputs."""
    from peftlab.lab.analysis.layers import initial_parameters
    from peftlab.config import from_dict
    from peftlab.methods.base import MethodConfig
    from peftlab.methods.io import read_manifest
    from peftlab.models.loading import load_model
    from peftlab.lab.run import load_trained

    cfg, loaded = load_trained(runs[4])
    saved = [from_dict(MethodConfig, m) for m in read_manifest(runs[4] / "adapter")["methods"]]
    start = initial_parameters(cfg, saved)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "labels": torch.tensor([[8, 9, 1]])}
    with torch.no_grad():
        trained = loaded.model(**batch).logits
        for _, _, params in block_adapter_params(loaded.model, loaded.family):
            for n, p in params.items():
                p.copy_(start[n])
        reset = loaded.model(**batch).logits
        base = load_model(cfg.model, seed=cfg.train.seed).model.eval()(**batch).logits
    assert not torch.allclose(trained, base, atol=1e-6)  # training changed the outputs
    assert torch.allclose(reset, base, atol=1e-5)
