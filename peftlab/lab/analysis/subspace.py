"""Subspace similarity between the LoRA updates of two runs (Hu et al., 2021, arXiv:2106.09685, §7.2).

For LoRA's down-projections ``A₁`` (r₁ × d_in) and ``A₂`` (r₂ × d_in) of the same layer, take the
right-singular vectors of each (``A = U Σ Vᵀ``; the rows of ``Vᵀ``, ordered by singular value) and
let ``V₁ⁱ`` be the top ``i`` of ``A₁``'s and ``V₂ʲ`` the top ``j`` of ``A₂``'s. Then::

    φ(A₁, A₂, i, j) = ‖V₁ⁱ V₂ʲᵀ‖_F² / min(i, j)        ∈ [0, 1]

is 1 when one span contains the other, 0 when they are orthogonal: a normalised Grassmann
similarity. The paper compares r = 8 with r = 64 (and two seeds of one rank) and finds the top
direction shared and the rest mostly noise, which argues for a very low rank.

``compare_runs`` reads both runs' adapters (onto fresh base models, as ``peftlab eval`` does) and
computes the i × j grid for every LoRA layer both runs adapted; ``write_subspace`` writes it as
``subspace.json``, a table ``subspace.md`` and a heat-map per layer in ``subspace.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from peftlab.errors import ModelError


def right_singular(a: torch.Tensor) -> torch.Tensor:
    """The right-singular vectors of ``a`` (r × d) as rows, by decreasing singular value: (min(r, d), d)."""
    _, _, vh = torch.linalg.svd(a.detach().to(torch.float64), full_matrices=False)
    return vh


def phi(v1: torch.Tensor, v2: torch.Tensor, i: int, j: int) -> float:
    """φ over the top ``i`` rows of ``v1`` and the top ``j`` rows of ``v2`` (orthonormal rows)."""
    if not (1 <= i <= v1.shape[0] and 1 <= j <= v2.shape[0]):
        raise ValueError(f"phi: i={i}, j={j} outside 1..{v1.shape[0]} and 1..{v2.shape[0]}")
    return float((v1[:i] @ v2[:j].T).pow(2).sum()) / min(i, j)


def phi_grid(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """``grid[i-1, j-1] = φ(a1, a2, i, j)`` for every i ≤ rank of a1's rows, j ≤ a2's: (r₁, r₂).

    Computed at once: with ``P = (V₁ V₂ᵀ)²`` elementwise, ‖V₁ⁱ V₂ʲᵀ‖_F² is the sum of P's top-left
    i × j block, a 2-D cumulative sum."""
    v1, v2 = right_singular(a1), right_singular(a2)
    squared = (v1 @ v2.T).pow(2)  # (r1, r2)
    sums = squared.cumsum(0).cumsum(1)
    i = torch.arange(1, v1.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, v2.shape[0] + 1, dtype=torch.float64)[None, :]
    return sums / torch.minimum(i, j)


def lora_down_projections(run_dir: Path) -> dict[str, torch.Tensor]:
    """``{module name: A}`` for every LoRA layer of a finished run."""
    from peftlab.methods.lora import LoraLinear
    from peftlab.lab.run import load_trained

    _, loaded = load_trained(Path(run_dir))
    found = {name: m.lora_a.detach().float().cpu().clone() for name, m in loaded.model.named_modules()
             if isinstance(m, LoraLinear)}
    if not found:
        raise ModelError(f"{run_dir}: its methods have no LoRA layer (lora-subspace compares LoRA's A matrices)")
    return found


def compare_runs(run_a: Path, run_b: Path) -> list[dict]:
    """One row per LoRA layer both runs adapted: ranks, φ(1, 1), φ(k, k) for k = min(r_a, r_b), the
    mean of the grid, and the grid itself."""
    a, b = lora_down_projections(run_a), lora_down_projections(run_b)
    common = [n for n in a if n in b]
    if not common:
        raise ModelError(f"{run_a} and {run_b} adapt no layer in common (LoRA on {sorted(a)[:2]}... vs "
                         f"{sorted(b)[:2]}...)")
    rows = []
    for name in common:
        if a[name].shape[1] != b[name].shape[1]:
            raise ModelError(f"{name}: input widths differ ({a[name].shape[1]} vs {b[name].shape[1]}): "
                             f"not the same base model")
        grid = phi_grid(a[name], b[name])
        k = min(grid.shape)
        rows.append({"layer": name, "r_a": int(a[name].shape[0]), "r_b": int(b[name].shape[0]),
                     "phi_1_1": float(grid[0, 0]), "phi_k_k": float(grid[k - 1, k - 1]), "k": k,
                     "phi_mean": float(grid.mean()), "grid": grid.tolist()})
    return rows


def write_subspace(run_a: Path, run_b: Path, out: Path) -> dict[str, Path]:
    """``subspace.json``, ``subspace.md`` and ``subspace.png`` (heat-maps) for two runs into ``out``."""
    from peftlab.lab import rundir

    rows = compare_runs(run_a, run_b)
    rundir.make_dir(Path(out), "--out")
    out = Path(out)
    rundir.write_json(out / "subspace.json", {"run_a": str(run_a), "run_b": str(run_b), "layers": rows})
    lines = [f"# LoRA subspace similarity: `{run_a}` vs `{run_b}`", "",
             "φ(A_a, A_b, i, j) = ‖V_aⁱ V_bʲᵀ‖²_F / min(i, j) over the top right-singular vectors of the A matrices "
             "(Hu et al. 2021, §7.2): 1 = one subspace contains the other, 0 = orthogonal.", "",
             "| Layer | r (a) | r (b) | φ(1, 1) | φ(k, k) | k | mean φ |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['r_a']} | {r['r_b']} | {r['phi_1_1']:.3f} | {r['phi_k_k']:.3f} | {r['k']} | "
              f"{r['phi_mean']:.3f} |" for r in rows]
    rundir.write_text(out / "subspace.md", "\n".join(lines) + "\n")
    heatmaps(rows, out / "subspace.png")
    return {"json": out / "subspace.json", "md": out / "subspace.md", "png": out / "subspace.png"}


def heatmaps(rows: list[dict], path: Path) -> Path:
    """One φ heat-map (i down, j across, 0..1) per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(len(rows), 6)
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.4 * nrows), squeeze=False)
    image = None
    for ax, r in zip(axes.flat, rows):
        grid = r["grid"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto",
                          extent=(0.5, len(grid[0]) + 0.5, len(grid) + 0.5, 0.5))
        ax.set_title(_short(r["layer"]), fontsize=7)
        ax.set_xlabel("j", fontsize=7)
        ax.set_ylabel("i", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="φ")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(name: str) -> str:
    """``encoder.block.0.layer.0.SelfAttention.q`` -> ``encoder.0.SelfAttention.q`` (block index kept,
    T5's sub-layer index dropped); ``model.layers.3.self_attn.q_proj`` -> ``3.self_attn.q_proj``."""
    out: list[str] = []
    for p in name.split("."):
        if p in ("block", "layer", "layers", "model") or (p.isdigit() and out and out[-1].isdigit()):
            continue
        out.append(p)
    return ".".join(out)
