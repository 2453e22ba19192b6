"""Counts and floors of the offline task suite, on each task's full test split (no model needed).

    python benchmarks/task_suite.py [--test-source PACKAGE] [--out FILE.json]

For every task mined from Python sources (and code->doc): the examples per split, and the floors
(best constant chosen on the validation split / majority class, BM25 retrieval) on the whole test
split, by the task's own metrics. The README's task table is this script's output on CPython 3.11.7.
"""

import argparse
import json
from pathlib import Path

from peftlab.lab.floors import floors
from peftlab.tasks import get_task

TASKS = ["code2doc", "method_name", "doc_match", "exception_type", "line_completion"]

p = argparse.ArgumentParser()
p.add_argument("--test-source", default="stdlib", help="stdlib, or an installed package for a cross-project test split")
p.add_argument("--out", type=Path, default=None)
args = p.parse_args()
report = {}
for name in TASKS:
    task = get_task(name)(test_source=args.test_source)
    train, valid, test = (task.examples(s) for s in ("train", "valid", "test"))
    f = floors(task, train, valid, test)
    report[task.describe()] = {"counts": {"train": len(train), "valid": len(valid), "test": len(test)},
                               "choices": task.choices(), "floors": f}
    key = f["metric"]
    shown = "  ".join(f"{n} {v[key]:.2f}" + (f" ({v['prediction']!r})" if "prediction" in v else "")
                      for n, v in f.items() if isinstance(v, dict))
    print(f"{task.describe():28} train {len(train):6,}  valid {len(valid):4}  test {len(test):4}   {key}: {shown}")
if args.out:
    args.out.write_text(json.dumps(report, indent=2) + "\n")
