"""A finished run scored on another test set, from its saved adapter, without training again.

    peftlab eval RUN --name cross-project --set data.task.test_source=accelerate

The run's config with the ``data.*`` edits applied gives the test rows (here: every function of
another package instead of the stdlib's test files); the model is the one the run trained, and each
task decodes as the run chose on its validation split (``metrics.json``'s ``decoding``; ``peftlab
eval --num-beams``... overrides it), no selection again: only the test rows change. The floors
(best constant / majority class, BM25 retrieval) are computed on the same new rows, so a method
that does not beat them is marked there too. ``RUN/evals/NAME.json`` holds the scores, floors,
edits and row count (keyed by the run's own task names), ``RUN/evals/NAME.predictions.jsonl`` the
outputs. A bench's ``evals:`` section runs this for every run (``peftlab.lab.bench.run``), and ``peftlab
report`` shows each as its own results table.

Why it matters: on the stdlib's test split, retrieval is a strong floor (the stdlib repeats itself);
on another project it collapses, and what remains is what a method learned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from peftlab.lab import rundir
from peftlab.errors import ConfigError
from peftlab.provenance import versions

EVALS = "evals"  # RUN/evals/<name>.json
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what an evaluation may change: which rows are scored, never the model or how it was trained
_EDITABLE = ("data.", "eval.max_examples", "eval.batch_size")


def check_eval(name: str, overrides: dict[str, Any], where: str = "evals") -> None:
    """A usable name (a file name) and edits of data fields only; ConfigError naming the key."""
    if not _NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a usable evaluation name (letters, digits, '.', '_', '-')")
    for key in overrides:
        if not any(key == e or key.startswith(e) for e in _EDITABLE):
            raise ConfigError(f"{where}.{name}: {key!r} cannot change in an evaluation of a trained run (only "
                              f"data.* and eval.max_examples / eval.batch_size: the test rows, not the model)")


def eval_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / EVALS / f"{name}.json"


def read_evals(run_dir: Path) -> dict[str, dict]:
    """``{name: record}`` of a run's evaluations (a damaged file is skipped)."""
    out = {}
    folder = Path(run_dir) / EVALS
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return out


def is_current(run_dir: Path, name: str, overrides: dict[str, Any]) -> bool:
    """Whether ``RUN/evals/NAME.json`` exists, made with these edits after the run's last training."""
    try:
        record = json.loads(eval_path(run_dir, name).read_text())
    except (OSError, ValueError):
        return False
    if record.get("overrides") != dict(overrides):
        return False
    trained = Path(run_dir) / rundir.TRAINED
    return not trained.is_file() or eval_path(run_dir, name).stat().st_mtime >= trained.stat().st_mtime


def edited_config(cfg, name: str, overrides: dict[str, Any], where: str):
    """``cfg`` (a RunConfig) with the evaluation's edits applied and checked, as its test rows are read."""
    from peftlab.config import FieldError, from_dict, set_path, to_dict
    from peftlab.schema import RunConfig

    check_eval(name, overrides)
    data = to_dict(cfg)
    for key, value in overrides.items():
        data = set_path(data, tuple(int(p) if p.isdigit() else p for p in key.split(".")), value, f"{key}={value}")
    try:
        new = from_dict(RunConfig, data, source=f"{where} with evals.{name}")
    except FieldError as e:
        raise ConfigError(f"{where} with evals.{name}: {e.field}: {e}") from None
    if len(new.data.tasks) != len(cfg.data.tasks):
        raise ConfigError(f"evals.{name}: the edits change the number of tasks ({len(cfg.data.tasks)} -> "
                          f"{len(new.data.tasks)}); an evaluation scores the run's own tasks")
    return new


def evaluate_on(run_dir: Path, name: str, overrides: dict[str, Any], decoding: Optional[dict] = None) -> dict:
    """Score a finished run on the test rows of its config with ``overrides`` (dotted keys) applied;
    writes and returns the record (see the module docstring). ``decoding``: settings over the run's
    chosen ones (``peftlab eval --num-beams``...), recorded per task as ``decoding``."""
    from peftlab.lab.floors import beats, task_floors
    from peftlab.lab.rundata import load_examples
    from peftlab.lab.run import load_trained
    from peftlab.lab.scoring import score, with_floor_rows

    run_dir = Path(run_dir)
    rundir.require_writable(run_dir, "an evaluation writes its scores there")
    cfg, loaded = load_trained(run_dir)
    new = edited_config(cfg, name, overrides, f"{run_dir / rundir.CONFIG}")
    d, causal = new.data, loaded.family.kind == "causal"
    names = [t.describe() for t in cfg.data.tasks]  # the run's task names, as its metrics.json keys them
    tok = loaded.tokenizer
    test = load_examples(d, d.test_split, new.eval.max_examples, causal, tok)
    chosen = run_decodings(run_dir, cfg, decoding)
    per_task, preds, stats, floor_rows = {}, [], {}, {}
    for t, task_name in enumerate(names):
        found: dict = {}
        scores, rows = score(loaded.model, loaded.tokenizer, new, [(i, e) for i, e in test if i == t],
                             decodings={d.tasks[t].describe(): chosen[task_name]}, row_stats=found)
        stats[task_name] = found[d.tasks[t].describe()]
        per_task[task_name] = dict(scores["task_metrics"][d.tasks[t].describe()])
        preds += [{**({"task": task_name} if len(names) > 1 else {}), **{k: v for k, v in r.items() if k != "task"}}
                  for r in rows]
    record = {"name": name, "overrides": dict(overrides), "test_split": d.test_split,
              "test_examples": len(test), "tasks": {n: t.describe() for n, t in zip(names, d.tasks)},
              "task_metrics": per_task, "created": rundir.now(), "versions": versions()}
    if new.eval.floors:
        train = load_examples(d, d.train_split, d.max_train_examples, causal, tok)
        valid = load_examples(d, d.eval_split, d.max_eval_examples, causal, tok)
        by_task: dict = {}
        floors = task_floors(d.tasks, train, valid, test, rows=by_task)
        floors = {names[i]: floors[t.describe()] for i, t in enumerate(d.tasks) if t.describe() in floors}
        floor_rows = {names[i]: by_task[t.describe()] for i, t in enumerate(d.tasks) if t.describe() in by_task}
        record["floors"] = floors
        record["beats_floors"] = {n: beats(per_task[n], f) for n, f in floors.items()}
    rundir.make_dir(run_dir / EVALS, "evaluation directory")
    rundir.write_text(run_dir / EVALS / f"{name}.predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in preds))
    rundir.write_json(run_dir / EVALS / f"{name}.{rundir.ROW_STATS}", with_floor_rows(stats, floor_rows))
    rundir.write_json(eval_path(run_dir, name), record)
    return record


def run_decodings(run_dir: Path, cfg, overrides: Optional[dict] = None) -> dict[str, dict]:
    """Each task's decoding settings (over its ``eval`` section), by task name: as the run chose
    them on its validation split (metrics.json; a task that chose nothing keeps the run's ``eval``
    settings), with ``overrides`` (the user's ``--num-beams``...) on top."""
    from peftlab.evaluate.select import recorded_decodings

    names = [t.describe() for t in cfg.data.tasks]
    metrics = rundir.read_metrics(run_dir) if (Path(run_dir) / rundir.METRICS).is_file() else {}
    chosen = recorded_decodings(metrics, names)
    return {n: {**chosen.get(n, {}), **(overrides or {})} for n in names}
