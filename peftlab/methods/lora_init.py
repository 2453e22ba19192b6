"""LoRA initialised from the base weight itself: ``init: pissa`` and ``init: olora`` of ``lora``.

PiSSA: Principal Singular values and Singular vectors Adaptation (Meng et al., 2024,
arXiv:2404.02948); OLoRA: Orthonormal Low-Rank Adaptation (Büyükakyüz, 2024, arXiv:2406.01775).
Both start the update at a principal part of ``W`` (out × in) and take that part out of the base::

    PiSSA:  W = U S Vᵀ,   A₀ = √(S_r / s) V_rᵀ  (r × in),   B₀ = U_r √(S_r / s)  (out × r)
    OLoRA:  W = Q R,      A₀ = R_r          (r × in),   B₀ = Q_r           (out × r)
    W_res = W − s B₀ A₀,   h = W_res x + b + s B A x,   A = A₀ and B = B₀ at init (so h = W x + b)

with s = α / r (α / √r under rsLoRA), S_r the r largest singular values, Q_r / R_r the first r
columns / rows of the QR factors. PiSSA trains the principal directions and freezes the residual;
OLoRA starts from an orthonormal basis of W's column space.

Where the residual lives. peft writes W_res over W in place. peftlab keeps W untouched and keeps
A₀, B₀ as frozen buffers of the layer, computing W_res x as W x − s B₀ (A₀ x). Hence:

* the adapter file holds A, B and A₀, B₀ (``AdapterModule.adapter_buffers``): loading onto a fresh
  base (the original W) gives back the trained model exactly, with no SVD or QR to redo, and a
  base another machine's LAPACK would decompose differently cannot shift it;
* merging folds ``W + s (B A − B₀ A₀)`` (= W_res + s B A) into the plain layer;
* peft's format is what peft's own PiSSA/OLoRA → LoRA conversion writes
  (``save_pretrained(path_initial_model_for_weight_conversion=...)``): the rank-2r LoRA
  ``[B, −B₀] [A; A₀]`` on the original W, α doubled (√2 α under rsLoRA) so s stays, which any
  LoRA loader applies to the untouched base.
"""

from __future__ import annotations

import torch

INITS_FROM_WEIGHT = ("pissa", "olora")


@torch.no_grad()
def principal_factors(w: torch.Tensor, r: int, scaling: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A₀, B₀)`` of ``w`` (out × in) for ``init`` (``pissa`` or ``olora``), in float32, such that
    ``s B₀ A₀`` is the principal part the layer takes out of its base."""
    w = w.detach().float()
    if init == "pissa":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # u: (out, k), s: (k,), vh: (k, in)
        root = (s[:r] / scaling).sqrt()
        return root[:, None] * vh[:r], u[:, :r] * root[None, :]
    if init == "olora":
        q, rr = torch.linalg.qr(w)  # q: (out, k), rr: (k, in)
        return rr[:r].contiguous(), q[:, :r].contiguous()
    raise ValueError(f"init {init!r} is not taken from the weight (those are {', '.join(INITS_FROM_WEIGHT)})")


def peft_rank_2r(alpha: float, r: int, rslora: bool, a, b, a0, b0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """peft's conversion of a PiSSA/OLoRA layer into plain LoRA on the original weight: the config
    fields that change (rank 2r, α so that the scale stays) and ``(lora_A, lora_B)`` =
    ``([A; A₀], [B, −B₀])``, since ``B A − B₀ A₀ = [B, −B₀] [A; A₀]``."""
    fields = {"r": 2 * r, "lora_alpha": alpha * (2 ** 0.5 if rslora else 2)}
    return fields, torch.cat([a, a0], dim=0), torch.cat([b, -b0], dim=1)
