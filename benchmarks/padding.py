"""How much of the suite's training batches is padding, and how much is labelled: what sequence
packing could save at most, and what the chunked loss skips on a decoder (positions labelled -100).

    python benchmarks/padding.py            # ~1 min on 2 cores: tokenizes each task's train split

Batches as training draws them (``peftlab.data.seq2seq.BatchPlan``: shuffled, length-sorted within
buckets of 50 batches), the first 100 of epoch 0 of each task of the two suite specs; for T5 the
padding is of encoder positions, and its labels are the decoder's (no labelled share).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from peftlab.data.seq2seq import BatchPlan
from peftlab.lab.rundata import encode_rows, load_examples
from peftlab.lab.bench.plan import load_bench

ROOT = Path(__file__).resolve().parents[1]
SPECS = (("configs/bench/suite-llama.yaml", True, "models/mini-llama"), ("configs/bench/suite-t5.yaml", False, "models/mini-t5"))


def main(batches: int = 100) -> None:
    print("| spec | task | padding, % of positions | labelled, % of positions |")
    print("|---|---|---:|---:|")
    for spec, causal, tokenizer in SPECS:
        bench = load_bench(ROOT / spec, ("seeds=[0]",))
        tok = AutoTokenizer.from_pretrained(ROOT / tokenizer)
        seen = set()
        for run in bench.runs:
            if run.task in seen:
                continue
            seen.add(run.task)
            cfg = run.config
            enc = encode_rows(tok, cfg.data, load_examples(cfg.data, "train", cfg.data.max_train_examples, causal), causal)
            real = padded = labelled = 0
            for batch in BatchPlan(enc, cfg.train.batch_size, 0, seed=0).epoch_batches(0)[:batches]:
                lengths = [len(enc.input_ids[i]) for i in batch]
                real += sum(lengths)
                padded += max(lengths) * len(lengths)
                labelled += sum(sum(1 for x in enc.labels[i] if x != -100) for i in batch)
            share = f"{100 * labelled / padded:.1f}" if causal else "–"  # T5's labels are the decoder's
            print(f"| {Path(spec).name} | {run.task} | {100 * (padded - real) / padded:.1f} | {share} |", flush=True)


if __name__ == "__main__":
    main()
