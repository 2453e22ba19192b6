"""LoRA parity with HF peft, computed live: same base, same A and B, same outputs and counts.

peft keeps ``<module>.lora_A.default.weight`` (r, in) and ``<module>.lora_B.default.weight``
(out, r); ours keeps ``<module>.lora_a`` and ``<module>.lora_b`` with the same shapes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.methods import apply_methods, peft_state
from peftlab.methods.lora import LoraConfig, LoraLinear, merge

from conftest import build_llama, build_t5, logits

peft = pytest.importorskip("peft")

# peft 0.21 calls a transformers 5 API that transformers deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PREFIX = "base_model.model."
CASES = {
    "t5": (build_t5, ["q", "v"]),
    "llama": (build_llama, ["q_proj", "v_proj"]),
}


def _pair(family: str, rslora: bool):
    """(peft model, our model) from one base, with peft's A and random nonzero B copied into ours."""
    build, peft_targets = CASES[family]
    base = build()
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=peft_targets, lora_dropout=0.0, use_rslora=rslora),
    )
    ours = base
    apply_methods(ours, [LoraConfig(r=4, alpha=8, targets=("q", "v"), rslora=rslora)])
    g = torch.Generator().manual_seed(3)
    copied = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(".lora_B.default.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, p in theirs.named_parameters():
            for suffix, attr in ((".lora_A.default.weight", "lora_a"), (".lora_B.default.weight", "lora_b")):
                if name.endswith(suffix):
                    path = name[len(PREFIX) : -len(suffix)]
                    module = ours.get_submodule(path)
                    assert isinstance(module, LoraLinear), path
                    getattr(module, attr).copy_(p)
                    copied.add(path)
    wrapped = {n for n, m in ours.named_modules() if isinstance(m, LoraLinear)}
    assert copied == wrapped, "peft and peftlab wrapped different modules"
    return theirs, ours


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_outputs_and_counts_match_peft(family, rslora, request):
    batch = request.getfixturevalue(f"{family}_batch")
    theirs, ours = _pair(family, rslora)
    expected = logits(theirs, batch)
    base = CASES[family][0]()
    assert (expected - logits(base, batch)).abs().max() > 1e-3, "B did not move the outputs"
    torch.testing.assert_close(logits(ours, batch), expected, atol=1e-5, rtol=0)

    trainable, total = theirs.get_nb_trainable_parameters()
    state = peft_state(ours)
    assert state.trainable_params(ours) == trainable
    assert state.total_params == total


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_merged_weights_match_peft(family, rslora, request):
    batch = request.getfixturevalue(f"{family}_batch")
    theirs, ours = _pair(family, rslora)
    merged_theirs = theirs.merge_and_unload()
    merge(ours)
    torch.testing.assert_close(logits(ours, batch), logits(merged_theirs, batch), atol=1e-5, rtol=0)
    params = dict(ours.named_parameters())
    for name, p in merged_theirs.named_parameters():
        torch.testing.assert_close(params[name], p, atol=1e-6, rtol=0, msg=name)
