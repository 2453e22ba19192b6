"""Held-out loss of a pretrained model, in bits per byte: comparable across tokenizers.

The held-out packages of a corpus spec (``peftlab.pretrain.packages``: the cross-project test
packages, never read by pretraining) are the evaluation set; their files come from the same pinned
wheels. Two models with different tokenizers see different token counts for the same text, so the
loss is reported per byte of text, not per token:

* causal LM: the summed next-token negative log-likelihood over each file (``<s> file </s>`` in
  windows that overlap by one token), divided by the file bytes and ln 2;
* T5: span corruption of each file with a fixed seed (the pretraining objective, so the number is
  the objective's own), the NLL of the target tokens that carry text (not the sentinels, not
  ``</s>``), divided by the bytes those tokens decode to and ln 2.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from peftlab.errors import DataError


def heldout_texts(manifest: dict, cache: Path, limit: int | None = None) -> list[str]:
    """The held-out packages' ``*.py`` files (UTF-8, non-empty), in manifest order, from ``cache``'s wheels."""
    texts = []
    for row in manifest["heldout"]:
        wheel = Path(cache) / row["wheel"]
        if not wheel.is_file():
            raise DataError(f"{wheel}: missing; fetch the held-out wheels with `peftlab data corpus SPEC --cache "
                            f"{cache} --out DIR`")
        with zipfile.ZipFile(wheel) as zf:
            for name in sorted(zf.namelist()):
                if name.endswith(".py") and ".dist-info/" not in name:
                    try:
                        text = zf.read(name).decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                    if text.strip():
                        texts.append(text)
    return texts[:limit] if limit else texts


@torch.no_grad()
def causal_bits_per_byte(model, tokenizer, texts: Sequence[str], *, window: int = 512, batch_size: int = 16) -> dict:
    """Each file as ``<s> tokens </s>`` cut into non-overlapping windows (the first token of a window
    is scored without the window before it: the same handicap for every model), batched."""
    from peftlab.pretrain.tokenizer import encode_sources

    rows = []
    for ids in encode_sources(tokenizer, texts):
        ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        rows += [ids[k:k + window] for k in range(0, len(ids) - 1, window - 1)]  # windows overlap by one token
    rows = [r for r in rows if len(r) > 1]
    rows.sort(key=len)  # similar lengths together: little padding
    model = model.eval()
    nll, n_tokens = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        width = max(map(len, batch))
        x = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in batch])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        nll += float(token_nll[keep].sum())
        n_tokens += int(keep.sum())
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"bits_per_byte": nll / (n_bytes * math.log(2)), "nll_per_token": nll / max(n_tokens, 1),
            "tokens": n_tokens, "bytes": n_bytes, "files": len(texts), "window": window}


@torch.no_grad()
def span_bits_per_byte(model, tokenizer, texts: Sequence[str], *, inputs_length: int = 256, batch_size: int = 16,
                       noise_density: float = 0.15, mean_span_length: float = 3.0, seed: int = 0) -> dict:
    from peftlab.pretrain.objectives import pack_span_corruption_array
    from peftlab.pretrain.tokenizer import encode_sources, sentinel_ids

    sentinels = sentinel_ids(tokenizer)
    docs = [np.asarray(d, dtype=np.int32) for d in encode_sources(tokenizer, texts)]
    inputs, targets = pack_span_corruption_array(docs, inputs_length, sentinels, tokenizer.eos_token_id,
                                                 np.random.default_rng(seed), noise_density, mean_span_length)
    special = torch.tensor(sorted(set(sentinels) | {tokenizer.eos_token_id}))
    model = model.eval()
    nll, n_tokens, n_bytes = 0.0, 0, 0
    for i in range(0, len(inputs), batch_size):
        x, y = torch.from_numpy(inputs[i:i + batch_size]).long(), torch.from_numpy(targets[i:i + batch_size]).long()
        logits = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).logits.float()
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        text = ~torch.isin(y, special)
        nll += float(token_nll[text].sum())
        n_tokens += int(text.sum())
        n_bytes += sum(len(tokenizer.decode(row[keep].tolist()).encode("utf-8")) for row, keep in zip(y, text))
    return {"bits_per_byte": nll / (n_bytes * math.log(2)), "nll_per_token": nll / max(n_tokens, 1),
            "tokens": n_tokens, "bytes": n_bytes, "examples": len(inputs), "files": len(texts)}


def bits_per_byte(model_dir: Path, texts: Sequence[str], **kw) -> dict:
    """Load ``model_dir`` with plain transformers (float32) and score ``texts`` by its objective."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    if config.is_encoder_decoder:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32)
        return {"objective": "span_corruption", **span_bits_per_byte(model, tok, texts, **kw)}
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {"objective": "causal", **causal_bits_per_byte(model, tok, texts, **kw)}
