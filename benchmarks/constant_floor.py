"""The floors of a config's tasks on its test rows: what every table is read against.

    python benchmarks/constant_floor.py [CONFIG] [key=value ...]   (default configs/papers/seed000/lora_r32_align.yaml)

Prints, per task, the best constant output (chosen on the validation rows) or majority class, the
BM25 nearest-neighbour retrieval floor (``peftlab.lab.floors``), and for code->doc the fixed
constants the README quotes ("Return a list of the ." -> CodeXGLUE BLEU 11.6, ROUGE-L 18.6, BLEU 0.70
on the seed-000 sample). The same floors are in every run's metrics.json.
"""

import json
import sys
from pathlib import Path

from peftlab.config import load_config
from peftlab.lab.floors import task_floors
from peftlab.evaluate.metrics import text_metrics
from peftlab.lab.rundata import load_examples
from peftlab.schema import RunConfig

args = [a for a in sys.argv[1:] if "=" not in a]
cfg = load_config(RunConfig, Path(args[0] if args else "configs/papers/seed000/lora_r32_align.yaml"),
                  [a for a in sys.argv[1:] if "=" in a])
d = cfg.data
test = load_examples(d, d.test_split, cfg.eval.max_examples)
floors = task_floors(d.tasks, load_examples(d, d.train_split, d.max_train_examples),
                     load_examples(d, d.eval_split, d.max_eval_examples), test)
print(json.dumps(floors, indent=2))
for t, task in enumerate(d.tasks):
    if task.name == "code2doc":
        refs = [e.target for i, e in test if i == t]
        for const in ("Return a .", "Return the .", "Return a list of the ."):
            m = text_metrics([const] * len(refs), refs)
            print(f"{const!r:28} BLEU {m['bleu']:.2f}  CodeXGLUE BLEU {m['codexglue_bleu']:.2f}  ROUGE-L {m['rouge_l']:.2f}")
