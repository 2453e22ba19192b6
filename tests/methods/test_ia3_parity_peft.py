"""IA3 parity with HF peft, computed live: same base, same vectors, same outputs, counts and merges;
and peft loads peftlab's export.

peft keeps ``<module>.ia3_l.default`` as (out, 1) for output-scaled layers and (1, in) for
feedforward (input-scaled) layers; ours keeps ``<module>.ia3_l`` as (out,) or (in,).
Tolerance: 1e-5 on logits (both compute the same float32 products; observed 0).
"""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.methods import apply_methods, peft_state
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.ia3 import IA3Config, ia3_modules

from conftest import build_llama, build_t5, logits

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PREFIX, SUFFIX = "base_model.model.", ".ia3_l.default"
BUILD = {"t5": build_t5, "llama": build_llama}


def _pair(family: str):
    """(peft model with its default IA3 targets, our model), the same random vectors in both."""
    base = BUILD[family]()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(task_type=None))
    ours = base
    apply_methods(ours, [IA3Config()])
    mods = ia3_modules(ours)
    g = torch.Generator().manual_seed(3)
    copied = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(SUFFIX):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
                path = name[len(PREFIX) : -len(SUFFIX)]
                feedforward = p.shape[0] == 1
                assert mods[path].feedforward == feedforward, path
                mods[path].ia3_l.copy_(p.flatten())
                copied.add(path)
    assert copied == set(mods), "peft and peftlab scaled different layers"
    return theirs, ours


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_outputs_and_counts_match_peft(family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    theirs, ours = _pair(family)
    expected = logits(theirs, batch)
    assert (expected - logits(BUILD[family](), batch)).abs().max() > 1e-2, "the vectors did not move the outputs"
    torch.testing.assert_close(logits(ours, batch), expected, atol=1e-5, rtol=0)
    trainable, total = theirs.get_nb_trainable_parameters()
    assert peft_state(ours).trainable_params(ours) == trainable
    assert peft_state(ours).total_params == total


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_merged_weights_match_peft(family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    theirs, ours = _pair(family)
    expected = logits(ours, batch)
    merged_theirs = theirs.merge_and_unload()
    merged = merged_model(ours)
    assert not any("ia3" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=0)
    params = dict(merged.named_parameters())
    for name, p in merged_theirs.named_parameters():
        torch.testing.assert_close(params[name], p, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("family, stacks", [("t5", None), ("t5", ("encoder",)), ("llama", None)])
def test_peft_loads_the_export_and_matches(family, stacks, tmp_path, request):
    import json

    batch = request.getfixturevalue(f"{family}_batch")
    ours = BUILD[family]()
    apply_methods(ours, [IA3Config(stacks=stacks)])
    with torch.no_grad():
        for m in ia3_modules(ours).values():
            m.ia3_l.normal_(1.0, 0.3)
    export_peft(ours, tmp_path / "peft", "tiny")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3"
    # encoder-only: leaf names would also pick the decoder's k/v/wo in peft, so an exact regex
    assert isinstance(config["target_modules"], str) == (stacks is not None)
    theirs = peft.PeftModel.from_pretrained(BUILD[family](), tmp_path / "peft")
    assert theirs.get_nb_trainable_parameters()[1] == peft_state(ours).total_params
    torch.testing.assert_close(logits(theirs, batch), logits(ours, batch), atol=1e-5, rtol=0)


def test_ia3_merge_unmerge_round_trip(t5_batch):
    model = build_t5()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_methods(model, [IA3Config()])
    mods = ia3_modules(model)
    with torch.no_grad():
        for m in mods.values():
            m.ia3_l.uniform_(0.5, 1.5)
    unmerged = logits(model, t5_batch)
    for m in mods.values():
        m.merge()
        m.merge()  # twice is a no-op
    torch.testing.assert_close(logits(model, t5_batch), unmerged, atol=1e-5, rtol=0)
    for m in mods.values():
        m.unmerge()
    params = dict(model.named_parameters())
    for n, w in before.items():
        torch.testing.assert_close(params[n], w, atol=1e-6, rtol=1e-6, msg=n)
    torch.testing.assert_close(logits(model, t5_batch), unmerged, atol=1e-5, rtol=0)
