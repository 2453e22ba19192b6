"""Shared fixtures: tiny random models built from config in milliseconds (no tokenizer, no hub).

``tiny_t5`` and ``tiny_llama`` are factories: ``tiny_t5()`` returns a fresh model, and two calls
with the same ``seed`` return identical models (what a save -> load round trip needs). Keyword
arguments override the family's ``tiny_config``, e.g. ``tiny_t5(d_model=64)``.

Numerics note: in transformers 5 a model whose parameters *all* have ``requires_grad=False`` takes
a slightly different path (logits differ by ~6e-6). Compare base vs adapted outputs both under
``torch.no_grad()`` (see ``logits``) and with ``atol`` around 1e-5.
"""

from __future__ import annotations

import pytest
import torch

VOCAB = 128
PAD = 0

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads
# spinning against each other made this suite ~10x slower (7 s -> 40-100 s).
torch.set_num_threads(1)


def build_t5(seed: int = 0, **overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    from peftlab.models.t5 import T5

    cfg = {**T5.tiny_config, **overrides}
    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=1, **cfg)
    return T5ForConditionalGeneration(config).eval()


def build_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftlab.models.llama import LLAMA

    cfg = {**LLAMA.tiny_config, **overrides}
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, pad_token_id=PAD, **cfg)).eval()


def build_gpt2(seed: int = 0, **overrides):
    """Tiny ``GPT2LMHeadModel`` (its linears are ``Conv1D``: weights stored in x out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from peftlab.models.gpt2 import GPT2

    cfg = {"vocab_size": VOCAB, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 1, **GPT2.tiny_config,
           **overrides}
    torch.manual_seed(seed)
    config = GPT2Config(**cfg)
    return GPT2LMHeadModel(config).eval()


# LLaMA-layout decoders peftlab's llama table covers besides LLaMA itself (tiny, head_dim explicit:
# Gemma and Qwen3 default to 256 and 128)
DECODER_TYPES = ("mistral", "qwen2", "qwen3", "gemma")


def build_decoder(model_type: str, seed: int = 0, **overrides):
    """Tiny causal LM of a LLaMA-layout ``model_type`` (``llama`` or ``DECODER_TYPES``), or ``"gpt2"``."""
    if model_type == "gpt2":
        return build_gpt2(seed, **overrides)
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftlab.models.llama import LLAMA

    cfg = {"vocab_size": VOCAB, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 1, **LLAMA.tiny_config,
           "head_dim": 8, **overrides}
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **cfg)
    return AutoModelForCausalLM.from_config(config).eval()


def logits(model, batch) -> torch.Tensor:
    """Model logits under ``no_grad`` (see the numerics note above)."""
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture
def tiny_t5():
    """Factory: ``tiny_t5(seed=0, **config_overrides)`` -> fresh tiny ``T5ForConditionalGeneration``."""
    return build_t5


@pytest.fixture
def tiny_llama():
    """Factory: ``tiny_llama(seed=0, **config_overrides)`` -> fresh tiny ``LlamaForCausalLM``."""
    return build_llama


@pytest.fixture
def tiny_gpt2():
    """Factory: ``tiny_gpt2(seed=0, **config_overrides)`` -> fresh tiny ``GPT2LMHeadModel``."""
    return build_gpt2


@pytest.fixture
def logits_of():
    """``logits_of(model, batch)``: logits under ``no_grad``, for base-vs-adapted comparisons."""
    return logits


@pytest.fixture
def t5_batch():
    """2 sources of 7 tokens (the second padded to 5) and 2 targets of 5 (the second with -100)."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, VOCAB, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = PAD
    labels = torch.randint(2, VOCAB, (2, 5), generator=g)
    labels[1, 4:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture
def llama_batch():
    """2 sequences of 8 tokens, the second right-padded to 6; labels are -100 on padding."""
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(2, VOCAB, (2, 8), generator=g)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = PAD
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


INIT_TEXT = "write the docstring of this python function"


def tiny_tokenizer_dir() -> str:
    """A word-level tokenizer whose 128 ids fit the tiny models (for text-initialised prompts):
    ``INIT_TEXT`` tokenises to ids 3..9, other words to ``<unk>`` (2). Built once per session."""
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is None:
        import atexit
        import shutil
        import tempfile

        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = ["<pad>", "</s>", "<unk>", *INIT_TEXT.split()]
        words += [f"w{i}" for i in range(len(words), VOCAB)]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        path = tempfile.mkdtemp(prefix="peftlab-tok-")
        atexit.register(shutil.rmtree, path, True)
        PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(path)
        _TOKENIZER_DIR = path
    return _TOKENIZER_DIR


_TOKENIZER_DIR = None
