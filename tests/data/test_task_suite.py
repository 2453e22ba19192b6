"""The offline task suite mined from Python sources: extractors, metrics by hand, deterministic
builds with disjoint splits, the pretraining exclusion on the real stdlib, cross-project test splits,
and one short training run per model family through the CLI's run path."""

from __future__ import annotations

import json
import sysconfig
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from peftlab.data import pysource
from peftlab.data.pysource import (SourceFile, VerbatimIndex, build_source_tasks, build_task_dir, functions_of,
                                   package_root, payload, write_tree)
from peftlab.data.splits import SPLITS, DEFAULT_PERCENT, file_digest, split_of_digest
from peftlab.errors import ConfigError, DataError
from peftlab.tasks import get_task
from peftlab.tasks.doc_match import DocMatchTask
from peftlab.tasks.exception_type import ExceptionTypeTask, mask_raises
from peftlab.tasks.line_completion import LineCompletionTask, cut_context
from peftlab.tasks.method_name import MethodNameTask, mask_name, name_metrics, subtokens
from peftlab.tasks.source import source_task_classes

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TASKS = [MethodNameTask, DocMatchTask, ExceptionTypeTask, LineCompletionTask]

MODULE = textwrap.dedent('''\
    """A module of the fixture tree."""
    import os


    class Store:
        def __init__(self, root):
            self.root = root

        def read_item(self, key):
            """Return the text stored under key, or None when absent."""
            path = os.path.join(self.root, key)
            if not os.path.exists(path):
                raise KeyError(key)
            return open(path).read()

        def write_item(self, key, text):
            """Store text under key, replacing any earlier value."""
            if not isinstance(text, str):
                raise TypeError(
                    f"text must be str, not {type(text).__name__}")
            with open(os.path.join(self.root, key), "w") as f:
                f.write(text)
            return len(text)


    def parse_size(text):
        """Parse a size such as 10k or 3M into a number of bytes."""
        # the unit is the last character
        units = {"k": 1024, "M": 1024 ** 2}
        if text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        if not text.isdigit():
            raise ValueError("bad size: " + text)
        return int(text)


    def mixed(x):
        if x:
            raise ValueError(x)
        raise TypeError(x)
    ''')


def source_file(text: str, path: str = "m.py", split: str = "train") -> SourceFile:
    return SourceFile(path, file_digest(text.encode()), split, text, functions_of(text))


# ------------------------------------------------------------------------------ method_name


def test_subtokens_split_snake_camel_and_digits():
    assert subtokens("read_item") == ["read", "item"]
    assert subtokens("getHTTPResponse_2") == ["get", "http", "response", "2"]
    assert subtokens("__init__") == ["init"] and subtokens("  parse size!") == ["parse", "size"]


def test_name_metrics_by_hand():
    # sub-tokens: pred [get value] [set value] [read]      ref [get value] [set item] [read file]
    # tp 2 + 1 + 1 = 4, fp 0 + 1 + 0 = 1, fn 0 + 1 + 1 = 2 -> P 4/5, R 4/6, F1 8/11
    m = name_metrics(["get_value", "setValue", "read"], ["get_value", "set_item", "read_file"])
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["precision"] == pytest.approx(80.0) and m["recall"] == pytest.approx(400 / 6)
    assert m["f1"] == pytest.approx(100 * 8 / 11)
    assert name_metrics(["getValue"], ["get_value"])["exact_match"] == 100.0  # same sub-tokens
    assert name_metrics([""], ["x_y"])["f1"] == 0.0


def test_method_name_masks_every_use_of_the_name():
    code = 'def walk(node):\n    """walk it"""\n    for c in node.walk():\n        walk(c)\n    s = "walk " + walkers'
    masked = mask_name(code, "walk", "<M>")
    assert masked.count("<M>") == 5 and "walkers" in masked  # def, docstring, .walk(), recursion, string; not walkers
    records = MethodNameTask.extract(source_file(MODULE))
    assert [r["name"] for r in records] == ["read_item", "write_item", "parse_size", "mixed"]  # no __init__
    ex = MethodNameTask().example({**records[2], "path": "m.py"})
    assert ex.target == "parse_size" and "parse_size" not in ex.source and '"""' not in ex.source
    assert ex.source.startswith("def <extra_id_0>(text):") and "# the unit" not in ex.source
    assert ex.source.endswith("The name of the function <extra_id_0> is:")
    assert MethodNameTask().prompt_tail == "\nThe name of the function <extra_id_0> is:"
    assert MethodNameTask(mask="_", template="{code}").example({**records[2], "path": "m.py"}).source.startswith("def _(")


# ------------------------------------------------------------------------------ doc_match


def test_doc_match_pairs_each_function_with_a_neighbour_from_its_module():
    records = DocMatchTask.extract(source_file(MODULE))
    documented = {"Store.read_item", "Store.write_item", "parse_size"}
    assert Counter(r["label"] for r in records) == {1: 3, 0: 3}  # balanced
    summaries = {r["func_name"]: r["doc"] for r in records if r["label"] == 1}
    for r in records:
        assert r["func_name"] in documented and '"""' not in r["code"]
        if r["label"] == 0:
            assert r["doc_of"] in documented and r["doc_of"] != r["func_name"] and r["doc"] == summaries[r["doc_of"]]
    assert DocMatchTask.extract(source_file(MODULE)) == records  # the negative's draw is fixed by file + function
    alone = 'def f(x):\n    """Return x plus one, always."""\n    y = x\n    return y + 1\n'
    assert DocMatchTask.extract(source_file(alone)) == []  # no other function to draw a negative from
    task = DocMatchTask()
    ex = task.example({**records[1], "path": "m.py"})
    assert task.choices() == ["no", "yes"] and ex.target == "no" and ex.label == 0
    assert ex.source.startswith("Docstring: ") and task.prompt_tail == "\nDoes the docstring describe the code?"


# -------------------------------------------------------------------------- exception_type


def test_mask_raises_keeps_where_and_hides_what():
    write_item = next(f for f in functions_of(MODULE) if f.name == "write_item")
    code, exc = mask_raises(write_item.cleaned, "raise ...")
    assert exc == "TypeError" and "TypeError" not in code and "must be str" not in code
    assert "        raise ...\n" in code  # the two-line raise became one line, indentation kept
    assert mask_raises("def f(x):\n    if x:\n        raise ValueError(x)\n    raise ValueError\n", "raise ...") == (
        "def f(x):\n    if x:\n        raise ...\n    raise ...\n", "ValueError")
    assert mask_raises("def f():\n    try:\n        g()\n    except E:\n        raise\n    raise mod.Err('x') from None\n",
                       "R")[1] == "Err"  # a bare re-raise does not count; the class is the last name
    assert mask_raises("def f(x):\n    raise ValueError if x else TypeError\n", "R")[1] is None
    assert mask_raises("def f(x):\n    return x\n", "R")[1] is None


def test_exception_type_records_and_label_set(tmp_path, monkeypatch):
    records = ExceptionTypeTask.extract(source_file(MODULE))
    assert [(r["func_name"], r["exception"]) for r in records] == [
        ("Store.read_item", "KeyError"), ("Store.write_item", "TypeError"), ("parse_size", "ValueError")]
    # `mixed` raises two classes: left out. A train split decides the frequent classes:
    rows = {"train": [{"func_name": f"f{i}", "line": 1, "path": "m.py", "code": "def f():\n    x\n    raise ...",
                       "exception": e} for i, e in enumerate(["A"] * 3 + ["B"] * 2 + ["C"] * 2 + ["D"])],
            "valid": [], "test": []}
    rows["test"] = rows["train"][:1] + [{**rows["train"][-1], "func_name": "g"}]
    write_tree(tmp_path / "et", payload(rows, {}))
    task = ExceptionTypeTask(path=str(tmp_path / "et"), num_classes=3)
    assert task.choices() == ["A", "B", "C"]  # by frequency, ties by name; D is not frequent
    assert [e.label for e in task.examples("test")] == [0]  # the D row is not an example
    assert ExceptionTypeTask(path=str(tmp_path / "et"), classes=("D", "A")).choices() == ["D", "A"]
    ex = ExceptionTypeTask(path=str(tmp_path / "et"), raise_mask="raise <X>").examples("train")[0]
    assert "raise <X>" in ex.source and ex.source.endswith("Which exception does this function raise?")
    with pytest.raises(ConfigError, match="data.task.num_classes: must be >= 2"):
        _task_config({"name": "exception_type", "num_classes": 1})


# ------------------------------------------------------------------------- line_completion


def test_line_completion_cuts_at_a_statement_and_keeps_the_end():
    records = LineCompletionTask.extract(source_file(MODULE))
    assert {r["func_name"] for r in records} == {"Store.read_item", "Store.write_item", "parse_size", "mixed"}
    for r in records:
        fn = next(f for f in functions_of(MODULE) if f.qualname == r["func_name"])
        lines = fn.cleaned.split("\n")
        at = len(r["context"].split("\n"))  # the target is the line right after the context
        assert lines[:at] == r["context"].split("\n") and lines[at] == r["indent"] + r["target"]
        assert r["target"] != "pass" and len(r["target"]) >= 4 and not r["target"].startswith("def ")
    assert LineCompletionTask.extract(source_file(MODULE)) == records  # the cut is fixed by the code
    context = "def f(a):\n" + "".join(f"    x{i} = {i}\n" for i in range(10)).rstrip("\n")
    assert cut_context(context, 40) == "def f(a):\n    x8 = 8\n    x9 = 9"  # def line + the last lines that fit
    assert cut_context(context, 1000) == context and cut_context("def f():\n" + "y" * 99, 10).endswith("y" * 99)
    task = LineCompletionTask()
    ex = task.example({**records[0], "path": "m.py"})
    assert ex.source.endswith("\n" + records[0]["indent"] + "<extra_id_0>") and task.prompt_tail == "<extra_id_0>"
    dec = task.render_for_decoder(ex)
    assert dec.source == ex.source[: -len("<extra_id_0>")] and dec.target == ex.target
    with pytest.raises(ConfigError, match="data.task.template: use {code} exactly once"):
        _task_config({"name": "line_completion", "template": "{code}{code}"})


def test_line_completion_scores_the_first_line_of_a_prediction():
    """CodeXGLUE's pipeline stops generating at <EOL>: a prediction is its first line."""
    task = LineCompletionTask()
    ex = task.example({"func_name": "f", "path": "m.py", "line": 1, "context": "def f():", "indent": "    ",
                       "target": "return x"})
    assert task.metrics(["return x\n    y = 2"], [ex]) == {"exact_match": 100.0, "edit_sim": 100.0}
    assert task.metrics(["\nreturn x"], [ex]) == {"exact_match": 0.0, "edit_sim": 0.0}


# ---------------------------------------------------------------------- building, splitting


def _tree(root: Path) -> Path:
    """A small tree: the module above under several names, one file duplicated, one broken."""
    (root / "pkg" / "sub").mkdir(parents=True)
    for i in range(8):
        (root / "pkg" / f"m{i}.py").write_text(MODULE.replace("parse_size", f"parse_size{i}") + f"\nX = {i}\n")
    (root / "pkg" / "sub" / "copy.py").write_text(MODULE + "\nX = 0\n# a copy with other bytes\n")
    (root / "pkg" / "broken.py").write_text("def f(:\n")
    (root / "pkg" / "tests").mkdir()
    (root / "pkg" / "tests" / "t.py").write_text(MODULE)
    return root


SPREAD = {"train": 40, "valid": 30, "test": 30}


def test_builds_are_deterministic_and_splits_disjoint(tmp_path):
    tree = _tree(tmp_path / "src")
    first = build_source_tasks([tree], SOURCE_TASKS, percent=SPREAD)
    again = build_source_tasks([str(tree)], SOURCE_TASKS, percent=SPREAD)
    assert first == again
    for name, (records, manifest) in first.items():
        assert manifest["counts"] == {s: len(records[s]) for s in SPLITS}
        assert manifest["skipped_files"][0]["path"] == "pkg/broken.py"
        files = {s: {f["path"] for f in manifest["files"][s]} for s in SPLITS}
        assert not any(p.startswith("pkg/tests/") for s in SPLITS for p in files[s])  # test dirs are not mined
        keys = {}
        for split in SPLITS:
            for r in records[split]:
                assert r["path"] in files[split] and split_of_digest(r["sha"], SPREAD) == split  # no file crosses
                key = get_task(name).record_key(r)
                assert key not in keys, f"{name}: {r['func_name']} in {keys.get(key)} and {split}"
                keys[key] = split
        assert sum(len(v) for v in files.values()) == 9 and all(files.values())  # every split holds files
    # the copy's functions equal m0..m7's except parse_size: duplicates were removed, in split order
    assert first["method_name"][1]["duplicates_removed"] > 0
    for i, extractor in enumerate(SOURCE_TASKS):  # one task's directory, byte for byte the same twice
        build_task_dir([tree], extractor, tmp_path / f"a{i}", percent=SPREAD)
        build_task_dir([tree], extractor, tmp_path / f"b{i}", percent=SPREAD)
        for f in ("train.jsonl", "valid.jsonl", "test.jsonl", "manifest.json"):
            assert (tmp_path / f"a{i}" / f).read_bytes() == (tmp_path / f"b{i}" / f).read_bytes()


def test_functions_seen_verbatim_in_pretraining_only_files_leave_valid_and_test(tmp_path):
    tree = _tree(tmp_path / "src")
    seen = VerbatimIndex(["class Other:\n    def write_item(self, key, text):\n" +
                          textwrap.indent(MODULE.split("def write_item(self, key, text):\n")[1].split("\n\n\n")[0], "")])
    everything_test = {"train": 0, "valid": 0, "test": 100}
    built = build_source_tasks([tree], [MethodNameTask], percent=everything_test, seen=seen)
    records, manifest = built["method_name"]
    assert manifest["seen_in_pretraining_removed"] == 9  # write_item in each of the 9 parsed files
    assert "write_item" not in {r["name"] for r in records["test"]}
    assert "def f():\n    return 1" not in seen and "" not in seen


def test_source_task_reads_a_built_directory_and_reports_missing_ones(tmp_path):
    tree = _tree(tmp_path / "src")
    build_task_dir([tree], MethodNameTask, tmp_path / "mn", percent=SPREAD)
    task = MethodNameTask(path=str(tmp_path / "mn"))
    counts = json.loads((tmp_path / "mn" / "manifest.json").read_text())["counts"]
    assert len(task.examples("train")) == counts["train"] and len(task.examples("validation")) == counts["valid"]
    assert len(task.examples("train", limit=2)) == 2
    assert task.resolved(tmp_path) == task
    rel = MethodNameTask(path="mn").resolved(tmp_path)
    assert rel.path == str((tmp_path / "mn").resolve())
    with pytest.raises(DataError, match="is not a directory"):
        MethodNameTask(path=str(tmp_path / "nope")).examples("train")
    with pytest.raises(DataError, match="unknown split 'eval'"):
        task.examples("eval")
    with pytest.raises(ConfigError, match="data.task.test_source: a cross-project test split goes with path: stdlib"):
        _task_config({"name": "method_name", "path": "x", "test_source": "rich"})


def test_cli_data_builds_a_task(tmp_path, capsys):
    from peftlab.lab.cli import main

    tree = _tree(tmp_path / "src")
    assert main(["data", "line_completion", str(tree), "--out", str(tmp_path / "lc"), "--percent", "40,30,30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"out", "train", "valid", "test"} and sum(out[s] for s in SPLITS) > 0
    assert sorted(p.name for p in (tmp_path / "lc").iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl",
                                                                   "valid.jsonl"]
    assert main(["data", "doc_match", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_every_source_task_is_registered():
    assert {c.name for c in source_task_classes()} == {t.name for t in SOURCE_TASKS}


def _task_config(task: dict):
    from peftlab.config import from_dict
    from peftlab.schema import RunConfig

    return from_dict(RunConfig, {"data": {"task": task}}).data.task


# -------------------------------------------------------------------- the real stdlib, pretraining


def test_valid_and_test_files_are_never_in_the_pretraining_corpus():
    """Built from the stdlib files of the valid/test splits (and a few train files): no valid/test
    record comes from a file of the corpus mini-t5 and mini-llama were pretrained on."""
    from peftlab.pretrain.corpus import build_corpus

    corpus = build_corpus()
    card = (ROOT / "models" / "mini-t5" / "README.md").read_text()
    if corpus.fingerprint() not in card:
        pytest.skip("this interpreter's stdlib is not the one mini-t5 was pretrained on")
    pretrained = set(corpus.digests)
    files = pysource.stdlib_sources()
    held_out = [p for p in files if split_of_digest(file_digest(p.read_bytes())) != "train"]
    assert 20 < len(held_out) < len(files) // 5
    built = build_source_tasks(held_out + files[:10], SOURCE_TASKS)
    for name, (records, _) in built.items():
        assert records["valid"] and records["test"], name
        for split in ("valid", "test"):
            assert not {r["sha"] for r in records[split]} & pretrained, f"{name} {split}"
        assert {r["sha"] for r in records["train"]} <= pretrained  # train files are pretraining files


def test_stdlib_build_happens_once_and_is_keyed_on_the_builders(tmp_path, monkeypatch):
    calls = []

    def fake_build(sources, extractors, **kwargs):
        calls.append(len(sources))
        return {e.name: ({s: [] for s in SPLITS}, {"counts": {s: 0 for s in SPLITS}}) for e in extractors}

    monkeypatch.setattr(pysource, "build_source_tasks", fake_build)
    monkeypatch.setattr(pysource, "pretraining_only_files", lambda: [])
    first = pysource.stdlib_tasks_dir(SOURCE_TASKS, tmp_path)
    assert pysource.stdlib_tasks_dir(SOURCE_TASKS, tmp_path) == first and len(calls) == 1 and calls[0] > 500
    assert sorted(p.name for p in first.iterdir()) == sorted(["manifest.json", *(t.name for t in SOURCE_TASKS)])

    class Bumped(MethodNameTask):
        builder_version = 2

    assert pysource.stdlib_tasks_dir([Bumped, *SOURCE_TASKS[1:]], tmp_path) != first and len(calls) == 2


def test_pretraining_only_files_are_the_stdlib_test_directories():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = pysource.pretraining_only_files()
    assert len(files) > 100 and all({"test", "tests", "idle_test"} & set(p.relative_to(root).parts) for p in files)


# -------------------------------------------------------------------------- cross-project tests


def test_package_root_finds_installed_packages_and_refuses_the_stdlib(tmp_path):
    rich = package_root("rich")
    assert rich.name == "rich" and "site-packages" in rich.parts
    assert package_root(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(DataError, match="part of the standard library"):
        package_root("json")
    with pytest.raises(DataError, match="neither an installed package nor a directory"):
        package_root("no_such_package_xyz")


def test_cross_project_test_split(tmp_path, monkeypatch):
    """test_source swaps the test split for another tree's functions, minus anything in train/valid."""
    stdlib_like = tmp_path / "cache" / "pytasks"
    built = build_source_tasks([_tree(tmp_path / "src")], SOURCE_TASKS, percent={"train": 60, "valid": 40, "test": 0})
    files = {}
    for name, (records, manifest) in built.items():
        files.update(payload(records, manifest, f"{name}/"))
    write_tree(stdlib_like, {**files, "manifest.json": "{}"})
    monkeypatch.setattr(pysource, "stdlib_tasks_dir", lambda extractors, cache_dir=None: stdlib_like)
    other = tmp_path / "otherpkg"
    other.mkdir()
    (other / "a.py").write_text(MODULE)  # every function here is already in train or valid ...
    (other / "b.py").write_text(MODULE.replace("Store", "Shelf").replace("parse_size", "parse_length"))  # ... not these
    for task_cls in SOURCE_TASKS:
        task = task_cls(test_source=str(other))
        test = task.records("test")
        assert test and {r["path"] for r in test} == {"b.py"}, task_cls.name
        assert task.describe() == f"{task_cls.name}@otherpkg" and len(task.examples("train")) > 0
        manifest = json.loads((task.split_file("test").parent / "manifest.json").read_text())
        assert manifest["counts"]["train"] == manifest["counts"]["valid"] == 0 and manifest["excluded_by_key"] > 0


def test_code2doc_cross_project_test_split(tmp_path, monkeypatch):
    from peftlab.data import code2doc

    stdlib_like = tmp_path / "c2d"
    code2doc.build_code2doc([ROOT / "tests" / "fixtures" / "srctree"], stdlib_like,
                            percent={"train": 100, "valid": 0, "test": 0})
    monkeypatch.setattr(code2doc, "default_code2doc_dir", lambda cache_dir=None: stdlib_like)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.py").write_text((ROOT / "tests/fixtures/srctree/pkg/geometry.py").read_text())
    (other / "y.py").write_text(MODULE)
    task = get_task("code2doc")(test_source=str(other))
    test = task.examples("test")
    assert {e.meta["path"] for e in test} == {"y.py"}  # geometry's functions are in train already
    assert {e.meta["func_name"] for e in test} == {"Store.read_item", "Store.write_item", "parse_size"}
    assert task.describe() == "code2doc@other" and task.split_files("test")[-1].endswith("code2doc/test.jsonl")
    with pytest.raises(ConfigError, match="test_source"):
        _task_config({"name": "code2doc", "path": "/x", "test_source": "rich"})


# -------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def suite_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    tree = _tree(root / "src")
    for task in SOURCE_TASKS:
        build_task_dir([tree], task, root / task.name, percent={"train": 50, "valid": 25, "test": 25})
    return root


FAST = ["train.max_steps=2", "data.max_eval_examples=6", "eval.max_examples=4", "eval.max_new_tokens=4",
        "data.max_source_length=96", "data.max_target_length=16"]


@pytest.mark.parametrize("task,config", [("method_name", "smoke.yaml"), ("exception_type", "smoke.yaml"),
                                         ("line_completion", "smoke-llama.yaml"), ("doc_match", "smoke-llama.yaml")])
def test_a_source_task_trains_and_scores_with_its_floors(suite_dirs, tmp_path, task, config):
    from peftlab.lab.cli import main

    out = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / config), "--out", str(out), "--quiet", *FAST,
            f"data.task={{name: {task}, path: {suite_dirs / task}}}"]
    if task in ("method_name", "line_completion"):
        args.append("eval.select={num_beams: [1, 2]}")
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    cls = get_task(task)
    assert m["task"] == task and set(cls.metric_names) <= set(m["task_metrics"][task])
    # a score named as a run field (method_name's sub-token "precision") never replaces the field
    assert m["precision"] in ("no", "bf16", "fp16") and m["steps"] == 2
    assert {k: m[k] for k in cls.metric_names if k != "precision"} == {
        k: m["task_metrics"][task][k] for k in cls.metric_names if k != "precision"}
    floors = m["floors"][task]
    assert floors["metric"] == cls.primary_metric and set(floors) == {"metric", "retrieval",
                                                                       "majority" if cls.kind == "classification" else "constant"}
    assert m["beats_floors"][task] == all(m[cls.primary_metric] > f[cls.primary_metric] for f in floors.values()
                                          if isinstance(f, dict))
    if "eval.select={num_beams: [1, 2]}" in args:
        assert m["decoding"] in ({"num_beams": 1}, {"num_beams": 2})
        assert [row["num_beams"] for row in m["decoding_selection"]] == [1, 2]
    else:
        assert "decoding" not in m
