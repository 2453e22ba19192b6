"""A run knows which base *weights* it was trained on, not only their name (issue 35): changing the
weights in a local base directory after training used to let ``peftlab eval RUN`` score the adapter
on the new base without a word."""

from __future__ import annotations

import shutil

import pytest
import torch

from peftlab.errors import ModelError
from tiny_runs import ROOT, SMOKE, make_data

SHORT_MODEL = ROOT / "models" / "mini-t5"


def _base(path, seed: int = 0):
    """A tiny T5 with mini-t5's vocabulary and tokenizer, saved as a pretrained model in ``path``."""
    from transformers import AutoConfig, T5ForConditionalGeneration

    config = AutoConfig.from_pretrained(SHORT_MODEL)
    config.update({"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2})
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHORT_MODEL / name, path / name)
    return path


def _train(run, base, data) -> int:
    from peftlab.lab.cli import main

    return main(["train", SMOKE, "--out", str(run), "--quiet", f"model.name={base}", "model.init=pretrained",
                 "model.config={}", "train.max_steps=2", "train.warmup_steps=0", "data.max_source_length=64",
                 "data.max_target_length=16", "data.max_eval_examples=4", "eval.max_examples=3",
                 "eval.max_new_tokens=3", f"data.task.path={data}", "train.mixed_precision=no"])


def test_an_adapter_is_refused_on_changed_base_weights_and_accepted_once_restored(tmp_path):
    from peftlab.lab.finished import evaluate_run

    base, data, run = _base(tmp_path / "base"), make_data(tmp_path / "data"), tmp_path / "run"
    assert _train(run, base, data) == 0
    kept = (base / "model.safetensors").read_bytes()
    evaluate_run(run)  # the same weights: scored
    _base(base, seed=1)  # the same name, other weights (a retrained or re-downloaded base)
    with pytest.raises(ModelError, match=r"is not the weights this adapter was trained on \(model\.safetensors "
                                         r"changed\).*restore those weights"):
        evaluate_run(run)
    (base / "model.safetensors").write_bytes(kept)
    evaluate_run(run)


def test_a_run_is_not_resumed_on_other_base_weights(tmp_path):
    from peftlab.lab import fingerprint
    from peftlab.lab.run import base_model_record, load_run_config

    base, data, run = _base(tmp_path / "base"), make_data(tmp_path / "data"), tmp_path / "run"
    assert _train(run, base, data) == 0
    cfg = load_run_config(run)
    d = cfg.data
    splits = (d.train_split, d.eval_split, d.test_split)
    fingerprint.record(run, d, splits, base_model_record(cfg))  # as a resume does: the same weights pass
    _base(base, seed=1)
    with pytest.raises(ModelError, match=r"not the weights this run started on \(model\.safetensors changed\)"):
        fingerprint.record(run, d, splits, base_model_record(cfg))


def test_the_fingerprint_reads_little_and_sees_header_and_sampled_changes(tmp_path):
    from peftlab.models.identity import BLOCK, BLOCKS, fingerprint_differences, sampled_sha256, weights_fingerprint

    path = tmp_path / "w.bin"
    data = bytearray(torch.randn(BLOCKS * BLOCK).numpy().tobytes())  # 4x larger than what is read
    path.write_bytes(data)
    first = sampled_sha256(path)
    data[0] ^= 1  # inside the first sampled block
    path.write_bytes(data)
    assert sampled_sha256(path) != first
    path.write_bytes(data[:-4])  # truncated: the size is part of it
    assert sampled_sha256(path) != first
    assert fingerprint_differences({"commit": "a" * 40}, {"commit": "b" * 40}) == [
        f"hub commit {'a' * 12} then, {'b' * 12} now"]
    assert fingerprint_differences({}, {"files": {"x": "1"}}) == []  # an old record: nothing to compare
    assert weights_fingerprint("nobody/not-in-the-cache") is None
