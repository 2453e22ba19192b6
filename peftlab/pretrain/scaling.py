"""Which model size a fixed CPU budget should buy: compute-optimal scaling on measured throughput.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", approach 3) model the
final loss of a model of N parameters trained on D tokens as

    L(N, D) = E + A / N^alpha + B / D^beta

We use the refit of Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt"):
E = 1.82, A = 482.01, B = 2085.43, alpha = 0.3478, beta = 0.3658. On a CPU the budget is seconds,
not FLOPs, and small models run far from peak, so D is not C / 6N but what the machine measurably
does in the budget: D(N) = budget_seconds x tokens_per_second(N). The size to train is the
candidate with the lowest predicted L. The fit is of large decoder LMs on web text; at 5-30M
parameters on code its absolute losses mean nothing, and the encoder-decoder's N and D are counted
as for a decoder (all parameters; input + target tokens). What it is used for here is the
trade-off between N and D at a fixed budget, which is the part the fit is for.
"""

from __future__ import annotations

E, A, B, ALPHA, BETA = 1.82, 482.01, 2085.43, 0.3478, 0.3658
REFERENCE = "Hoffmann et al. 2022 approach 3, refit by Besiroglu et al. 2024"


def predicted_loss(params: float, tokens: float) -> float:
    return E + A / params**ALPHA + B / tokens**BETA


def choose(candidates: list[dict], budget_seconds: float, *, min_tokens: float = 0.0,
           max_params: float = float("inf")) -> dict:
    """``candidates``: rows with ``name``, ``parameters`` and measured ``tokens_per_second``.

    Returns ``{"rows": [...each with tokens, tokens_per_param, predicted_loss, eligible...],
    "chosen": name}``: the eligible row (``parameters <= max_params`` and ``tokens >= min_tokens``)
    with the lowest predicted loss."""
    rows = []
    for c in candidates:
        tokens = budget_seconds * c["tokens_per_second"]
        why = []
        if c["parameters"] > max_params:
            why.append(f"over {max_params:,.0f} parameters")
        if tokens < min_tokens:
            why.append(f"under {min_tokens:,.0f} tokens in the budget")
        rows.append({**c, "tokens": tokens, "tokens_per_param": tokens / c["parameters"],
                     "predicted_loss": predicted_loss(c["parameters"], tokens), "ineligible": "; ".join(why) or None})
    eligible = [r for r in rows if r["ineligible"] is None]
    if not eligible:
        raise ValueError("no candidate fits the budget's constraints")
    best = min(eligible, key=lambda r: r["predicted_loss"])
    return {"rows": rows, "chosen": best["name"], "budget_seconds": budget_seconds, "fit": REFERENCE,
            "constants": {"E": E, "A": A, "B": B, "alpha": ALPHA, "beta": BETA}}
