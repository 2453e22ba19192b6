"""The models peftlab ships in models/: loadable by plain transformers, as their cards say, stable."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [("mini-t5", "AutoModelForSeq2SeqLM"), ("mini-llama", "AutoModelForCausalLM")]


@pytest.fixture(scope="module", params=SHIPPED, ids=[s[0] for s in SHIPPED])
def shipped(request):
    import transformers

    name, auto = request.param
    d = ROOT / "models" / name
    if not (d / "model.safetensors").exists():
        pytest.fail(f"{d} has no weights: run the recipe in configs/pretrain-{name}.yaml")
    model = getattr(transformers, auto).from_pretrained(d)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    return d, model, tok, json.loads((d / "pretrain_stats.json").read_text())


def test_card_matches_the_weights(shipped):
    d, model, tok, stats = shipped
    n = sum(p.numel() for p in model.parameters())
    card = (d / "README.md").read_text()
    assert n == stats["parameters"] and f"{n:,} parameters" in card
    assert len(tok) == model.config.vocab_size == stats["vocab_size"] and f"{len(tok):,}" in card
    assert stats["corpus"]["fingerprint"] in card and stats["command"] in card
    assert (d / "model.safetensors").stat().st_size <= 25 * 2**20
    assert 10e6 <= n <= 20e6


def test_same_logits_on_a_fixed_input_every_time(shipped):
    import torch

    from peftlab.pretrain.recipe import logits_check

    d, model, tok, stats = shipped
    now = logits_check(model, tok)
    want = stats["logits_check"]
    assert now["argmax"] == want["argmax"]
    assert now["first"] == pytest.approx(want["first"], abs=2e-3)
    assert now["sum"] == pytest.approx(want["sum"], rel=1e-4)
    assert torch.equal(torch.tensor(logits_check(model, tok)["first"]), torch.tensor(now["first"]))


def test_pretraining_beat_random_init(shipped):
    _, _, _, stats = shipped
    assert stats["heldout_loss"] < stats["random_init_heldout_loss"] - 2.0


def test_tokenizer_round_trips_python(shipped):
    _, _, tok, _ = shipped
    src = (ROOT / "peftlab" / "config.py").read_text()
    ids = tok(src, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == src


def test_no_evaluation_file_was_pretrained_on():
    from peftlab.data.code2doc import default_code2doc_dir
    from peftlab.pretrain.corpus import build_corpus

    manifest = json.loads((default_code2doc_dir() / "manifest.json").read_text())
    held = {f["sha256"] for split in ("valid", "test") for f in manifest["files"][split]}
    corpus = set(build_corpus().digests)
    assert held and corpus and not held & corpus


def test_plain_from_pretrained_gives_float32(shipped):
    """The weights are bf16 on disk; config.json says float32 so that plain ``from_pretrained`` (and
    the README's peft recipe) gives the model peftlab uses, not a bf16 one."""
    import torch
    from safetensors import safe_open

    d, model, _, _ = shipped
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with safe_open(d / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
