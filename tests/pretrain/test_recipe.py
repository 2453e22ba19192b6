"""A few-step pretrain on a tiny corpus: writes a from_pretrained-loadable directory, resumes."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from peftlab.errors import ConfigError, DataError
from peftlab.pretrain.recipe import load_pretrain_config, pretrain

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_T5 = ["architecture.d_model=32", "architecture.d_kv=8", "architecture.d_ff=64", "architecture.num_layers=2",
           "architecture.num_decoder_layers=2", "architecture.num_heads=4"]
TINY_LLAMA = ["architecture.hidden_size=32", "architecture.intermediate_size=64", "architecture.num_hidden_layers=2",
              "architecture.num_attention_heads=4", "architecture.num_key_value_heads=2"]
COMMON = ["vocab_size=400", "inputs_length=64", "heldout_percent=25", "eval_batches=2", "train.batch_size=4",
          "train.log_every=2", "train.warmup_steps=1", "checkpoint_every=3", "train.mixed_precision=no"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "textwrap.py", "fnmatch.py", "shlex.py",
                 "glob.py", "heapq.py", "string.py", "copy.py", "numbers.py"):
        shutil.copy(STDLIB / name, root / name)
    return root


def cfg(name, corpus, steps, extra=()):
    tiny = TINY_T5 if "t5" in name else TINY_LLAMA
    return load_pretrain_config(ROOT / "configs" / "pretrain" / f"{name}-v1.yaml",
                                [f"corpus=[{corpus}]", f"train.max_steps={steps}", *COMMON, *tiny, *extra])


@pytest.mark.parametrize("name, auto", [("mini-t5", "AutoModelForSeq2SeqLM"), ("mini-llama", "AutoModelForCausalLM")])
def test_pretrain_writes_a_loadable_model_dir(tmp_path, corpus, name, auto):
    import transformers

    out = tmp_path / name
    stats = pretrain(cfg(name, corpus, 4), out, progress=False, command="test")
    model = getattr(transformers, auto).from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == stats["parameters"]
    assert len(tok) == stats["vocab_size"] == model.config.vocab_size
    # bf16 on disk (half the size), float32 as plain from_pretrained loads it
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert next(model.parameters()).dtype == torch.float32
    assert (out / "README.md").read_text().count(stats["corpus"]["fingerprint"]) == 1
    assert stats["steps"] == 4 and stats["heldout_loss"] < stats["random_init_heldout_loss"] + 0.5
    for key in ("tokens_seen", "train_seconds", "final_train_loss", "hardware", "command", "cpu_capability",
                "native_bf16"):
        assert key in stats
    assert stats["mixed_precision"] == "no" and stats["precision"] == "no"  # requested, and what ran
    assert "| precision | fp32 |" in (out / "README.md").read_text()


def test_pretrain_resumes_exactly_after_a_stop(tmp_path, corpus):
    full = tmp_path / "full"
    every = ["train.log_every=1"]
    pretrain(cfg("mini-t5", corpus, 6, every), full, progress=False)
    part = tmp_path / "part"
    halted = pretrain(cfg("mini-t5", corpus, 6, every), part, progress=False, halt_at=3)  # as if killed after step 3
    assert halted["halted_at_step"] == 3 and not (part / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(cfg("mini-t5", corpus, 6), part, progress=False)
    pretrain(cfg("mini-t5", corpus, 6, every), part, resume=True, progress=False)

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())}

    a, b = losses(full), losses(part)
    assert [a[s] for s in range(1, 7)] == pytest.approx([b[s] for s in range(1, 7)], rel=1e-5)
    from safetensors.torch import load_file

    wa, wb = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_corpus_and_tokenizer(tmp_path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        pretrain(cfg("mini-t5", empty, 2), tmp_path / "o1", progress=False)
    with pytest.raises(DataError):
        pretrain(cfg("mini-t5", tmp_path / "missing", 2), tmp_path / "o2", progress=False)
    plain = tmp_path / "plain_tok"
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.add_special_tokens(["<pad>", "</s>", "<unk>"])
    PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(plain)
    with pytest.raises(DataError, match="sentinel"):
        pretrain(cfg("mini-t5", corpus, 2, [f"tokenizer={plain}"]), tmp_path / "o3", progress=False)


def test_causal_window_longer_than_the_model_allows_names_the_field(corpus):
    with pytest.raises(ConfigError, match=r"inputs_length.*max_position_embeddings: 32"):
        cfg("mini-llama", corpus, 2, ["architecture.max_position_embeddings=32"])
