"""What a pretrained base model's card shows beyond the recipe's own record: its loss curve, the
compute-optimal arithmetic that chose its size, its held-out loss beside an earlier version's on the
same held-out files (bits per byte: the tokenizers differ), and a few samples of what it can and
cannot do. Run it on a quiet machine once the model is made:

    python benchmarks/pretrain_report.py models/mini-t5 --previous models/mini-t5-v1 \
        --corpus ~/.cache/peftlab/corpus-v2 --wheels ~/.cache/peftlab/wheels \
        --sizing benchmarks/results/pretrain-v2/sizing-t5.json --out benchmarks/results/pretrain-v2/mini-t5.json

It writes ``MODEL/loss_curve.png``, the JSON record ``--out`` (command, machine, versions, commit) and
appends the sections to ``MODEL/README.md`` (a card already extended is rewritten from its first
extension on, so running it twice gives one copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MARK = "\n<!-- pretrain_report.py -->\n"
T5_SAMPLES = ["def area(width, height):\n    <extra_id_0> width * height\n",
              "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        return [line.<extra_id_0>() for line in f]\n"]
CAUSAL_SAMPLES = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                  "import json\n\n\ndef load_config(path):\n"]


def loss_curve(model_dir: Path, png: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in (model_dir / "train_log.jsonl").read_text().splitlines() if '"loss"' in ln]
    tokens = [r["tokens"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(tokens, [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("training loss")
    ax.set_title(model_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return {"points": len(rows), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "tokens_millions": tokens[-1]}


def samples(model_dir: Path) -> list[dict]:
    """Greedy continuations of a few fixed prompts (T5: the span it fills in)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir).eval()
    out = []
    for prompt in (T5_SAMPLES if config.is_encoder_decoder else CAUSAL_SAMPLES):
        ids = tok(prompt, add_special_tokens=False, split_special_tokens=not config.is_encoder_decoder)["input_ids"]
        ids = ids + ([tok.eos_token_id] if config.is_encoder_decoder else [])
        if not config.is_encoder_decoder:
            ids = [tok.bos_token_id] + ids
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id)
        new = gen[0] if config.is_encoder_decoder else gen[0, len(ids):]
        out.append({"prompt": prompt, "output": tok.decode(new, skip_special_tokens=not config.is_encoder_decoder)})
    return out


def card_sections(record: dict) -> str:
    s = record
    lines = [MARK, "## How its size was chosen", "",
             f"Budget: {s['sizing']['budget_hours']:g} hours at {s['sizing']['threads']} thread on the machine "
             f"below; each candidate's tokens/s measured there (`{s['sizing']['file']}`), its tokens in the budget "
             f"D = budget × tokens/s, and its loss predicted by {s['sizing']['fit']} "
             f"(L = E + A/N^α + B/D^β). The lowest eligible loss was chosen.", "",
             "| Candidate | Parameters | Tokens/s | D (M tokens) | D/N | Predicted loss | |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in s["sizing"]["rows"]:
        mark = "chosen" if r["name"] == s["sizing"]["chosen"] else (r.get("ineligible") or "")
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['tokens_per_second']:,.0f} | {r['tokens'] / 1e6:.1f} | "
                     f"{r['tokens_per_param']:.1f} | {r['predicted_loss']:.3f} | {mark} |")
    lines += ["", "## Loss", "", "![training loss](loss_curve.png)", ""]
    h = s.get("heldout")
    if h:
        lines += [f"Held-out loss on the {h['files']} files of the held-out packages "
                  f"({', '.join(h['packages'])}: never read by pretraining), in bits per byte (the tokenizers differ):",
                  "", "| Model | bits per byte | nats per token | tokens |", "|---|---:|---:|---:|"]
        for name, r in h["models"].items():
            lines.append(f"| {name} | {r['bits_per_byte']:.4f} | {r['nll_per_token']:.4f} | {r['tokens']:,} |")
        lines.append("")
    lines += ["## What it can and cannot do", "",
              "Greedy outputs on fixed prompts (nothing chosen by how they read):", ""]
    for x in s["samples"]:
        lines += ["```python", x["prompt"].rstrip(), "```", f"→ `{' '.join(x['output'].split())}`", ""]
    lines += ["It is a test bed for PEFT methods: it has seen Python and continues it plausibly, "
              "but it is far too small to be useful on its own.", ""]
    return "\n".join(lines)


def main() -> None:
    from peftlab.device import hardware
    from peftlab.pretrain.heldout import bits_per_byte, heldout_texts
    from peftlab.provenance import versions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--previous", type=Path, default=None, help="an earlier version, scored on the same files")
    ap.add_argument("--corpus", type=Path, required=True, help="the built corpus (its manifest names the held-out wheels)")
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--sizing", type=Path, required=True)
    ap.add_argument("--max-files", type=int, default=None, help="score only the first N held-out files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    texts = heldout_texts(manifest, args.wheels, args.max_files)
    models = {args.model.name + " (this)": args.model}
    if args.previous:
        models[args.previous.name] = args.previous
    sizing = json.loads(args.sizing.read_text())
    record = {
        "command": "python " + " ".join(sys.argv), "machine": hardware(), "versions": versions(),
        "loss_curve": loss_curve(args.model, args.model / "loss_curve.png"),
        "sizing": {**{k: sizing[k] for k in ("rows", "chosen", "budget_hours", "fit", "threads")}, "file": str(args.sizing)},
        "heldout": {"files": len(texts), "packages": [h["pin"] for h in manifest["heldout"]],
                    "models": {name: bits_per_byte(path, texts) for name, path in models.items()}},
        "samples": samples(args.model),
    }
    record["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    card = (args.model / "README.md").read_text().split(MARK)[0]
    (args.model / "README.md").write_text(card.rstrip() + "\n" + card_sections(record))


if __name__ == "__main__":
    main()
