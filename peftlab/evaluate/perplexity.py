"""Perplexity of a causal LM on plain-text or source files, sliding windows for long texts.

Token-weighted over everything scored::

    ppl = exp( Σ_t NLL(x_t | context) / N )      N = number of scored tokens, all texts together

Each text is ``[bos] + tokens`` (as a decoder prompt starts; with no BOS the first token is only
context). A text longer than ``window`` is read in windows starting ``stride`` tokens apart, and each
window scores only the tokens the previous window did not (Hugging Face's "Perplexity of
fixed-length models" recipe): with ``stride < window`` every token after the first window sees at
least ``window - stride`` tokens of context, and every token but the first is scored exactly once;
``stride = window`` gives disjoint windows, whose first tokens are context only (not scored).

Windows of all texts are batched by length; the loss is taken only at scored positions
(``cross_entropy`` on those rows of the logits), so no (batch × length × vocab) log-softmax is kept.

Sources: a file, a directory (its ``*.py`` and ``*.txt``, sorted), or ``stdlib``: the standard
library files that the content-hash split puts in ``test`` (never in pretraining, never in the
code→doc or instruction training sets).
"""

from __future__ import annotations

import io
import math
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from peftlab.errors import DataError

SUFFIXES = (".py", ".txt")


@dataclass(frozen=True)
class Window:
    ids: list[int]  # the window's tokens
    first: int  # index in ``ids`` of the first scored token (>= 1: position 0 is only context)


def windows(ids: Sequence[int], window: int, stride: int) -> list[Window]:
    """The HF recipe's windows over one text: starts ``stride`` apart, each scoring only the tokens
    after the previous window's end; the last window ends at the text's end."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    out, prev_end, n = [], 0, len(ids)
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        first = max(prev_end - begin, 1)  # tokens before prev_end were scored by an earlier window
        if first < end - begin:
            out.append(Window(list(ids[begin:end]), first))
        prev_end = end
        if end == n:
            break
    return out


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """``(name, text)`` of a file, of a directory's ``*.py``/``*.txt`` files, or of ``stdlib``'s
    held-out (test-split) files. Python files are decoded by their PEP 263 cookie."""
    if str(path) == "stdlib":
        from peftlab.data.pycode import stdlib_sources
        from peftlab.data.splits import split_of_file

        files = [p for p in stdlib_sources() if split_of_file(p) == "test"]
    else:
        root = Path(path)
        if not root.exists():
            raise DataError(f"perplexity: {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    texts = []
    for p in files:
        data = p.read_bytes()
        try:
            enc = tokenize.detect_encoding(io.BytesIO(data).readline)[0] if p.suffix == ".py" else "utf-8"
            text = data.decode(enc)
        except (UnicodeDecodeError, SyntaxError, LookupError) as e:
            raise DataError(f"perplexity: {p}: cannot decode ({e})") from None
        if text.strip():
            texts.append((str(p), text))
    if not texts:
        raise DataError(f"perplexity: no text in {path} (looked for {', '.join('*' + s for s in SUFFIXES)})")
    return texts


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, window: int, stride: int | None = None,
               batch_size: int = 8, mixed_precision: str = "no") -> dict:
    """``{"ppl", "nll", "tokens", "texts", "windows", "window", "stride"}`` of ``model`` on ``texts``."""
    from peftlab.data.seq2seq import collate
    from peftlab.evaluate.generate import autocast_dtype

    if model.config.is_encoder_decoder:
        raise DataError("perplexity needs a causal LM; this model is an encoder-decoder")
    stride = stride or max(window // 2, 1)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    wins = [w for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
            for w in windows(bos + ids, window, stride)]
    if not wins:
        raise DataError("perplexity: the texts have no token to score")
    wins.sort(key=lambda w: len(w.ids))
    device = next(model.parameters()).device
    dtype = autocast_dtype(mixed_precision, device)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for start in range(0, len(wins), batch_size):
            chunk = wins[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([w.ids for w in chunk], None, tokenizer.pad_token_id).items()}
            scored = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
            for i, w in enumerate(chunk):
                scored[i, w.first : len(w.ids)] = True
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**batch).logits  # (B, L, V)
            rows = logits[:, :-1][scored[:, 1:]].float()  # predictions of the scored tokens: (N, V)
            nll += F.cross_entropy(rows, batch["input_ids"][:, 1:][scored[:, 1:]], reduction="sum").item()
            count += int(scored.sum())
    finally:
        model.train(was_training)
    mean = nll / count
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "texts": len(texts), "windows": len(wins),
            "window": window, "stride": stride}


def default_window(model, fallback: int) -> int:
    """``fallback`` (the run's sequence length), capped by the model's position table."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(fallback, limit) if limit else fallback
