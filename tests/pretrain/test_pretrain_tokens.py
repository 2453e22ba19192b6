"""Pretraining data: the stdlib corpus, byte-level BPE tokenizer, span corruption, packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peftlab.data.splits import file_digest, split_of_digest
from peftlab.errors import DataError
from peftlab.pretrain.corpus import build_corpus, default_roots
from peftlab.pretrain.objectives import (
    compute_input_and_target_lengths,
    pack_causal,
    pack_span_corruption,
    random_spans_noise_mask,
    reconstruct,
    span_corrupt,
)
from peftlab.pretrain.tokenizer import (
    SENTINELS,
    SPECIAL_TOKENS,
    encode_source,
    encode_sources,
    save_tokenizer,
    sentinel_ids,
    train_tokenizer,
)

AWKWARD = Path(__file__).parents[1] / "fixtures" / "awkward_py"
SENTINEL_IDS = list(range(4, 104))
EOS, BOS = 1, 3


def awkward_texts() -> dict[str, str]:
    # read_bytes, not read_text: read_text would turn CRLF into LF before the tokenizer sees it
    return {p.name: p.read_bytes().decode("utf-8") for p in sorted(AWKWARD.glob("*.py"))}


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    stdlib = default_roots()[0]
    sample = [(stdlib / n).read_text("utf-8") for n in ("textwrap.py", "shlex.py", "heapq.py")]
    tok = train_tokenizer(sample + list(awkward_texts().values()), vocab_size=1000)
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_fixtures_are_awkward():
    raw = {p.name: p.read_bytes() for p in AWKWARD.glob("*.py")}
    assert b"\r\n" in raw["crlf.py"] and b"\t" in raw["tabs.py"] and raw["empty.py"] == b""
    assert max(len(line) for line in raw["long_line.py"].splitlines()) > 10_000
    assert any(ord(c) > 0xFFFF for c in raw["emoji.py"].decode())  # outside the BMP


def test_saved_files_and_config(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 2048
    assert config["clean_up_tokenization_spaces"] is False
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert spec["normalizer"] is None
    post = spec["post_processor"]  # transformers writes a pass-through "$A" template
    assert post is None or not post.get("special_tokens")


@pytest.mark.parametrize("name", sorted(awkward_texts()))
def test_round_trip_after_save_and_load(hf_tokenizer, name):
    text = awkward_texts()[name]
    ids = hf_tokenizer.encode(text)
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert hf_tokenizer.decode(ids) == text  # no special token crept in
    assert encode_source(hf_tokenizer, text) == ids


def test_special_ids_and_no_automatic_bos_eos(hf_tokenizer):
    t = hf_tokenizer
    assert (t.pad_token, t.eos_token, t.unk_token, t.bos_token) == tuple(
        ["<pad>", "</s>", "<unk>", "<s>"])
    assert (t.pad_token_id, t.eos_token_id, t.unk_token_id, t.bos_token_id) == (0, 1, 2, 3)
    assert [t.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS] == [0, 1, 2, 3]
    ids = t.encode("x = 1\n")
    assert ids and not {0, 1, 2, 3} & set(ids)  # callers add bos/eos themselves


def test_special_strings_in_source_are_text(hf_tokenizer):
    ids = hf_tokenizer.encode("'</s>' '<extra_id_0>'")
    assert hf_tokenizer.eos_token_id not in ids and 4 not in ids


def test_sentinels_are_single_consecutive_special_tokens(hf_tokenizer):
    ids = sentinel_ids(hf_tokenizer)
    assert ids == SENTINEL_IDS
    assert [hf_tokenizer.convert_ids_to_tokens(i) for i in ids] == SENTINELS
    assert set(SENTINELS) <= set(hf_tokenizer.all_special_tokens)
    assert hf_tokenizer.decode(ids[:3], skip_special_tokens=True) == ""


def test_raw_tokenizer_matches_saved_one(tokenizer_dir, hf_tokenizer):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    assert sentinel_ids(raw) == SENTINEL_IDS
    texts = list(awkward_texts().values())
    assert list(encode_sources(raw, texts, batch_size=3)) == [hf_tokenizer.encode(t) for t in texts]


def test_sentinel_ids_error_without_sentinels():
    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.BPE())
    bare.add_special_tokens(SPECIAL_TOKENS)
    with pytest.raises(DataError, match="lacks T5 sentinel tokens"):
        sentinel_ids(bare)


def test_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=300)


# ---------------------------------------------------------------- span corruption


def test_noise_mask_density_and_span_length():
    rng = np.random.default_rng(0)
    noise = spans = total = 0
    for length in rng.integers(50, 1000, size=300):
        mask = random_spans_noise_mask(int(length), 0.15, 3.0, rng)
        assert mask.shape == (length,) and not mask[0] and mask[-1]  # T5: keep first, noise last
        noise += int(mask.sum())
        spans += int((mask[1:] & ~mask[:-1]).sum())
        total += int(length)
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1


def test_noise_mask_is_random_but_seeded():
    a = random_spans_noise_mask(200, 0.15, 3.0, np.random.default_rng(1))
    b = random_spans_noise_mask(200, 0.15, 3.0, np.random.default_rng(1))
    c = random_spans_noise_mask(200, 0.15, 3.0, np.random.default_rng(2))
    assert (a == b).all() and (a != c).any()


def test_span_corrupt_layout_and_reconstruct():
    rng = np.random.default_rng(0)
    for length in [1, 2, 5, 17, 100, 513]:
        tokens = list(rng.integers(200, 1000, size=length))
        inputs, targets = span_corrupt(tokens, SENTINEL_IDS, EOS, rng)
        assert inputs[-1] == EOS and targets[-1] == EOS
        used_in = [t for t in inputs if t in SENTINEL_IDS]
        used_out = [t for t in targets if t in SENTINEL_IDS]
        assert used_in == used_out == SENTINEL_IDS[: len(used_in)]  # in order, from <extra_id_0>
        assert targets[0] == (SENTINEL_IDS[0] if length > 1 else EOS)  # 1 token: nothing to drop
        assert reconstruct(inputs, targets, SENTINEL_IDS, EOS) == tokens


def test_span_corrupt_worked_example(monkeypatch):
    import peftlab.pretrain.objectives as objectives

    mask = np.array([0, 0, 0, 1, 1, 0, 0, 1], bool)  # the example in the module docstring
    monkeypatch.setattr(objectives, "random_spans_noise_mask", lambda *args: mask)
    inputs, targets = span_corrupt([10, 11, 12, 13, 14, 15, 16, 17], SENTINEL_IDS, EOS, None)
    assert inputs == [10, 11, 12, 4, 15, 16, 5, EOS]
    assert targets == [4, 13, 14, 5, 17, EOS]


def test_too_many_spans_for_the_sentinels():
    with pytest.raises(ValueError, match="sentinels"):
        span_corrupt(list(range(200, 2200)), SENTINEL_IDS[:10], EOS, np.random.default_rng(0))


@pytest.mark.parametrize("inputs_length", [3, 8, 32, 128, 512, 568])
def test_input_and_target_lengths(inputs_length):
    raw, targets_length = compute_input_and_target_lengths(inputs_length, 0.15, 3.0)
    rng = np.random.default_rng(inputs_length)
    for _ in range(5):
        inputs, targets = span_corrupt(list(range(200, 200 + raw)), SENTINEL_IDS, EOS, rng)
        assert (len(inputs), len(targets)) == (inputs_length, targets_length)


def test_t5_default_lengths():
    # T5's reference numbers for inputs_length=512 at 15% noise, mean span 3
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)


def test_pack_span_corruption():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(200, 1000, size=n)) for n in rng.integers(1, 300, size=40)]
    raw, targets_length = compute_input_and_target_lengths(64, 0.15, 3.0)
    packed = list(pack_span_corruption(docs, 64, SENTINEL_IDS, EOS, rng))
    stream = [t for d in docs for t in [*d, EOS]]
    assert len(packed) == len(stream) // raw
    for k, (inputs, targets) in enumerate(packed):
        assert len(inputs) == 64 and len(targets) == targets_length
        assert reconstruct(inputs, targets, SENTINEL_IDS, EOS) == stream[k * raw:(k + 1) * raw]


# ---------------------------------------------------------------- causal packing


def test_pack_causal():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34, 35, 36, 37, 38]]
    windows = list(pack_causal(docs, 4, BOS, EOS))
    stream = [3, 10, 11, 12, 1, 3, 20, 1, 3, 30, 31, 32, 33, 34, 35, 36, 37, 38, 1]
    assert windows == [stream[i:i + 4] for i in range(0, 16, 4)]  # ragged tail of 3 dropped
    assert list(pack_causal([[5] * 10], 3, BOS, EOS)) == [
        [3, 5, 5], [5, 5, 5], [5, 5, 5], [5, 5, 1]]
    assert list(pack_causal([], 4, BOS, EOS)) == []


# ---------------------------------------------------------------- corpus


def _content_in_split(split: str, start: int = 0) -> str:
    i = start
    while split_of_digest(file_digest(f"x = {i}\n".encode())) != split:
        i += 1
    return f"x = {i}\n"


def test_corpus_rules_on_a_small_tree(tmp_path):
    (tmp_path / "pkg" / "test").mkdir(parents=True)
    (tmp_path / "site-packages").mkdir()
    train_a, train_b = _content_in_split("train"), _content_in_split("train", 10_000)
    (tmp_path / "b.py").write_text(train_a)
    (tmp_path / "pkg" / "a.py").write_text(train_a)  # duplicate of b.py: kept once, first by path
    (tmp_path / "pkg" / "test" / "test_x.py").write_bytes(train_b.encode() + b"\r\n")
    (tmp_path / "pkg" / "valid.py").write_text(_content_in_split("valid"))
    (tmp_path / "pkg" / "test.py").write_text(_content_in_split("test"))
    (tmp_path / "latin1.py").write_bytes(b"s = '\xe9'\n")
    (tmp_path / "empty.py").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / "site-packages" / "dep.py").write_text(_content_in_split("train", 20_000))

    corpus = build_corpus([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in corpus.files] == [
        "b.py", "pkg/test/test_x.py"]
    assert list(corpus.texts()) == [train_a, train_b + "\r\n"]  # CRLF kept
    assert corpus.summary()["files"] == 2
    assert corpus.summary()["bytes"] == len(train_a) + len(train_b) + 2

    everything = build_corpus([tmp_path], exclude_eval_splits=False)
    assert len(everything.files) == 4
    assert everything.fingerprint() != corpus.fingerprint()
    no_eval = build_corpus([tmp_path], percent={"train": 100, "valid": 0, "test": 0})
    assert no_eval.fingerprint() == everything.fingerprint()


def test_corpus_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        build_corpus([tmp_path / "missing"])
    (tmp_path / "readme.txt").write_text("no python here")
    with pytest.raises(DataError, match=str(tmp_path)):
        build_corpus([tmp_path])
    with pytest.raises(DataError):
        build_corpus([])


def test_stdlib_corpus():
    corpus = build_corpus()
    assert len(corpus.files) > 500
    assert len(set(corpus.digests)) == len(corpus.digests)
    assert all(split_of_digest(d) == "train" for d in corpus.digests)
    sampled = zip(corpus.files[::50], corpus.digests[::50])
    assert all(file_digest(p.read_bytes()) == d for p, d in sampled)
    assert any("test" in p.parts for p in corpus.files)  # test directories are pretraining text
    assert not any("site-packages" in p.parts for p in corpus.files)
    again = build_corpus()
    assert again.files == corpus.files and again.fingerprint() == corpus.fingerprint()
    summary = corpus.summary()
    print(f"stdlib corpus: {summary}")
