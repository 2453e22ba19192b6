"""The model card (README.md) written beside a pretrained model's weights."""

from __future__ import annotations


_PRECISION = {"bf16": "bf16 autocast, fp32 weights", "fp16": "fp16 autocast with loss scaling", "no": "fp32"}


def model_card(s: dict) -> str:
    arch = "T5 v1.1-style encoder-decoder (gated GELU)" if s["objective"] == "span_corruption" else (
        "LLaMA-architecture decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention)")
    objective = ("T5 span corruption (noise density {nd}, mean span {ms}, packed inputs of {n} tokens)".format(
        nd=s["config"]["noise_density"], ms=s["config"]["mean_span_length"], n=s["config"]["inputs_length"])
        if s["objective"] == "span_corruption" else f"causal LM on packed {s['config']['inputs_length']}-token windows")
    c = s["corpus"]
    return f"""---
library_name: transformers
license: apache-2.0
tags: [peftlab, code, python]
---
# {s['name']}

peftlab's own small pretrained model: a {arch} of **{s['parameters']:,} parameters**, pretrained
from scratch on this interpreter's Python standard library so that peftlab's offline comparisons
run on a base model that knows something. It is a test bed for PEFT methods, not a useful model.

| | |
|---|---|
| architecture | {arch} |
| objective | {objective} |
| vocabulary | {s['vocab_size']:,} (byte-level BPE; pad 0, eos 1, unk 2, bos 3, `<extra_id_0..99>` 4-103) |
| corpus | Python {s['versions']['python']} stdlib `*.py`, minus every file in the code→doc valid/test splits: {c['files']:,} files, {c['bytes']:,} bytes |
| corpus fingerprint | `{c['fingerprint']}` (SHA-256 over the sorted file digests) |
| held out | {c['heldout_files']} files (not trained on) |
| training tokens in corpus | {c['train_tokens']:,} |
| steps | {s['steps']:,} |
| tokens seen | {s['tokens_seen']:,} (inputs + targets) |
| hardware | {s['hardware']}{f" ({s['cpu_capability']})" if s.get('cpu_capability') else ""} |
| precision | {_PRECISION.get(s.get('precision'), 'not recorded')} |
| train time | {s['train_seconds'] / 3600:.2f} h ({s['tokens_per_second']:,.0f} tokens/s) |
| final train loss | {s['final_train_loss']:.4f} |
| held-out loss | {s['heldout_loss']:.4f} (randomly initialised twin: {s['random_init_heldout_loss']:.4f}) |
| versions | torch {s['versions']['torch']}, transformers {s['versions']['transformers']}, peftlab {s['versions']['peftlab']} |

Made by:

```
{s['command']}
```

Load it with plain transformers (`AutoModelForSeq2SeqLM` / `AutoModelForCausalLM`
`.from_pretrained(DIR)`, `AutoTokenizer.from_pretrained(DIR)`), or as `model: {s['name']}` in a peftlab
config. The tokenizer adds no bos/eos by itself: peftlab appends `</s>` to encoder inputs.
The weights are stored in bfloat16 and `config.json` says `float32`, so `from_pretrained` gives
a float32 model (the exact upcast, as peftlab loads it); pass `dtype=torch.bfloat16` for bf16.
"""
