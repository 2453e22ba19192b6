"""A byte-level BPE tokenizer for Python source, shared by peftlab's T5 and LLaMA-style models.

Byte-level BPE (GPT-2's scheme, via HF ``tokenizers``) maps every byte to a symbol, so any text
round-trips exactly: indentation, tabs, trailing spaces, CRLF, non-ASCII, emoji. There is no
normalizer. Ids 0-3 are ``<pad> </s> <unk> <s>`` (pad=0 doubles as T5's decoder start id), then
the 100 T5 sentinels ``<extra_id_0..99>`` at consecutive ids 4-103.

Two choices callers must know:

* No post-processor: encoding never adds ``<s>`` or ``</s>``. Callers add them explicitly (the T5
  encoder input ends with ``</s>``; a LLaMA sequence starts with ``<s>``), so one tokenizer serves
  both models and nothing is added twice.
* Special-token strings in text are plain text (``split_special_tokens``): Python sources contain
  ``"</s>"`` and ``"<s>"`` literally (html and regex tests), and they must not become eos/bos.
  Special ids enter a sequence only as ids, never by writing their string.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from peftlab.errors import DataError

if TYPE_CHECKING:
    import tokenizers

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0, 1, 2, 3
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]  # ids 4..103, T5 span-corruption sentinels
MODEL_MAX_LENGTH = 2048


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, *, min_frequency: int = 2
) -> tokenizers.Tokenizer:
    """Train byte-level BPE on ``texts``; the vocabulary includes the 104 special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = len(SPECIAL_TOKENS) + len(SENTINELS) + len(alphabet)
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is below {floor} (special tokens + 256 bytes)")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + SENTINELS,  # added first, in order: ids 0..103
        initial_alphabet=alphabet,  # every byte is a token, so nothing is ever <unk>
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: tokenizers.Tokenizer, out_dir: str | Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``AutoTokenizer``."""
    from transformers import PreTrainedTokenizerFast

    missing = [t for t in SPECIAL_TOKENS + SENTINELS if tok.token_to_id(t) is None]
    if missing:
        raise DataError(f"tokenizer lacks special tokens {missing[:5]}; "
                        "train it with train_tokenizer")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        extra_special_tokens=SENTINELS,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,  # would rewrite " ." as "." and break round trips
        split_special_tokens=True,  # see module docstring
    )
    wrapped.save_pretrained(str(out_dir))


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of ``<extra_id_0>`` .. ``<extra_id_99>`` in order (HF or ``tokenizers`` tokenizer)."""
    vocab = tokenizer.get_vocab()
    missing = [s for s in SENTINELS if s not in vocab]
    if missing:
        raise DataError(
            f"tokenizer {type(tokenizer).__name__} lacks T5 sentinel tokens <extra_id_N> "
            f"(missing {len(missing)}, e.g. {missing[0]}); "
            f"span corruption needs all {len(SENTINELS)}"
        )
    return [vocab[s] for s in SENTINELS]


def encode_source(tokenizer, text: str) -> list[int]:
    """Token ids of raw source text: no bos/eos added, special-token strings kept as text."""
    return next(encode_sources(tokenizer, [text]))


def encode_sources(tokenizer, texts: Iterable[str], batch_size: int = 64) -> Iterator[list[int]]:
    """``encode_source`` over many texts, batched so the Rust backend uses every core."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # HF wrapper or raw Tokenizer
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from _encode_batch(backend, batch)
            batch = []
    if batch:
        yield from _encode_batch(backend, batch)


def _encode_batch(backend, batch: list[str]) -> list[list[int]]:
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous
