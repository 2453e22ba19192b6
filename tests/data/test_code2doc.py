"""Code→doc data: CodeXGLUE JSONL reading, code cleaning, and corpus building from source trees."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sysconfig
from pathlib import Path

import pytest

from peftlab.data import code2doc
from peftlab.data.code2doc import (
    BUILDER_VERSION,
    Code2DocExample,
    build_code2doc,
    default_code2doc_dir,
    docstring_tokens,
    extract_functions,
    load_code2doc_split,
    read_codexglue_jsonl,
)
from peftlab.data.pycode import clean_code, stdlib_sources, summary_from_docstring
from peftlab.data.prompts import SEED000_TEMPLATE, render_prompt
from peftlab.data.splits import SPLITS, split_of_file
from peftlab.errors import ConfigError, DataError

FIXTURES = Path(__file__).parents[1] / "fixtures"
SAMPLE = FIXTURES / "codexglue_python_sample.jsonl"
SRCTREE = FIXTURES / "srctree"
CODEXGLUE_FIELDS = {
    "repo", "path", "func_name", "original_string", "language", "code", "code_tokens",
    "docstring", "docstring_tokens", "sha", "url", "partition",
}  # fmt: skip
# Under this split the fixture tree spreads over all three splits, with the two copies of `clamp`
# (pkg/clamp_a.py and pkg/util/clamp_b.py) in different ones; test_fixture_tree_is_meaningful checks it.
SPREAD = {"train": 50, "valid": 30, "test": 20}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------- reading JSONL


def test_read_codexglue_sample():
    examples = read_codexglue_jsonl(SAMPLE)
    records = _lines(SAMPLE)
    assert len(examples) == len(records) == 5
    for lineno, (ex, rec) in enumerate(zip(examples, records), 1):
        assert set(rec) == CODEXGLUE_FIELDS  # the fixture is in the exact distributed format
        assert isinstance(ex, Code2DocExample)
        assert ex.func_name == rec["func_name"] and ex.path == rec["path"] and ex.line == lineno
        assert ex.target == " ".join(rec["docstring_tokens"])
        assert '"""' not in ex.code and "Args:" not in ex.code and ":rtype:" not in ex.code
        assert ex.code.startswith(("def ", "async def "))
    by_name = {ex.func_name: ex for ex in examples}
    adapter = by_name["Session.get_adapter"].code
    assert "Nothing matches" not in adapter and "prefixes are lower-cased" not in adapter
    assert "'%s#%s'" in adapter and '"#"))' in adapter  # '#' inside strings is code, not a comment
    assert "Python 2 print" not in by_name["_shell_escape"].code  # a snippet that does not parse
    assert 'print "escaped: %s" % string' in by_name["_shell_escape"].code


def test_read_docstring_target_and_max_examples():
    examples = read_codexglue_jsonl(SAMPLE, target_field="docstring", max_examples=3)
    assert [ex.target for ex in examples] == [
        "Converts a value into a valid string.",
        "Returns the appropriate connection adapter for the given URL.",
        "Cache the results of a function of one hashable argument.",
    ]
    with pytest.raises(ValueError, match="target_field"):
        read_codexglue_jsonl(SAMPLE, target_field="summary")


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "split.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"func_name": "f", "code": "def f():\n    return 1", "docstring_tokens": ["Return", "one"]})


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"func_name": "f", "code": ', r"not valid JSON"),
        ("[1, 2]", r"expected a JSON object, got list"),
        ('{"func_name": "f", "docstring_tokens": []}', r"missing field 'code' \(fields present: docstring_tokens, func_name\)"),
        ('{"func_name": "f", "code": "x", "docstring_tokens": "Return one"}', r"field 'docstring_tokens' must be a list"),
        ('{"func_name": 3, "code": "x", "docstring_tokens": []}', r"field 'func_name' must be str, got int"),
    ],
)  # fmt: skip
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, GOOD, "", bad)  # the blank line still counts: the bad one is line 3
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: {message}"):
        read_codexglue_jsonl(path)


def test_blank_lines_skipped_empty_and_missing_files(tmp_path):
    assert len(read_codexglue_jsonl(_write(tmp_path, "", GOOD, "  ", GOOD, ""))) == 2
    empty = _write(tmp_path, "", "  ")
    with pytest.raises(DataError, match=rf"^{re.escape(str(empty))}: .*empty split"):
        read_codexglue_jsonl(empty)
    with pytest.raises(DataError, match="nowhere.jsonl"):
        read_codexglue_jsonl(tmp_path / "nowhere.jsonl")


# -------------------------------------------------------------------------------- clean_code


def test_clean_code_keeps_hashes_in_strings_and_drops_comments():
    code = 'def f(x):  # trailing\n    """Doc # not code."""\n    s = "a # b"  # real\n    return s + \'#\' + f"{x}#"\n'
    assert clean_code(code) == 'def f(x):\n    s = "a # b"\n    return s + \'#\' + f"{x}#"'


def test_clean_code_nested_docstrings_and_blank_lines():
    code = '''async def outer():
    r"""Outer doc.

    More.
    """

    # setup


    class Inner:
        \'\'\'Class doc.\'\'\'
        def m(self):
            "Method doc."
            return 1   \n
    def inner():
        """Inner doc."""
        return Inner
    return inner
'''
    assert clean_code(code) == (
        "async def outer():\n"
        "    class Inner:\n"
        "        def m(self):\n"
        "            return 1\n"
        "\n"
        "    def inner():\n"
        "        return Inner\n"
        "    return inner"
    )


def test_clean_code_indented_crlf_and_unparseable():
    # An indented method snippet parses once dedented; CRLF line ends are normalised.
    assert clean_code('    def m(self):\r\n        """Doc."""\r\n        return 1  # one\r\n') == "def m(self):\n    return 1"
    # Python 2 code: comments go by tokenize, the docstring by the fallback regex, and nothing raises.
    py2 = 'def f(a,\n      b):\n    """Doc with # hash."""\n    print "x # y", a  # show\n    return `b`\n'
    assert clean_code(py2) == 'def f(a,\n      b):\n    print "x # y", a\n    return `b`'
    for junk in ["", "def", '"""unterminated', "def f(:\n\tif\n  x # c\n", "\x00"]:
        assert isinstance(clean_code(junk), str)
    assert "# c" not in clean_code("def f(:\n    x # c\n")


# ----------------------------------------------------------------------- docstrings and tokens


@pytest.mark.parametrize(
    "docstring, summary",
    [
        ("Return the sum.", "Return the sum."),
        ("\n    Return the sum\n    of a and b.\n\n    Details here.\n    ", "Return the sum of a and b."),
        ("Return the sum.\n:param a: first\n:returns: the sum", "Return the sum."),
        ("Return the sum.\n    Args:\n        a: first", "Return the sum."),
        ("Return the sum.\nParameters\n----------\na : int", "Return the sum."),
        ("Return the sum.\n>>> add(1, 2)\n3", "Return the sum."),
        ("Return the sum.\n@param a: first", "Return the sum."),
        ("Returns the sum of the arguments\nwhen they are numbers.", "Returns the sum of the arguments when they are numbers."),
        ("", ""),
    ],
)  # fmt: skip
def test_summary_from_docstring(docstring, summary):
    assert summary_from_docstring(docstring) == summary


def test_docstring_tokens():
    assert docstring_tokens("Returns a (reader, writer) pair.") == [
        "Returns", "a", "(", "reader", ",", "writer", ")", "pair", ".",
    ]  # fmt: skip
    assert docstring_tokens("array-likes in ``x``") == ["array", "-", "likes", "in", "`", "`", "x", "`", "`"]


# ------------------------------------------------------------------------ extracting functions


def test_extract_functions_geometry():
    path = SRCTREE / "pkg" / "geometry.py"
    records = extract_functions(path.read_text(), "pkg/geometry.py")
    by_name = {r["func_name"]: r for r in records}
    # __init__: no docstring; short: a 2-word summary; Shape.area: nothing left but the def line.
    assert list(by_name) == ["Point.norm", "Point.quadrant", "polygon_area", "polygon_area.cross", "one_liner"]
    for r in records:
        assert CODEXGLUE_FIELDS <= set(r) and r["language"] == "python" and r["path"] == "pkg/geometry.py"
        assert r["partition"] == split_of_file(path) and r["code"] == r["original_string"]
        assert r["code"].startswith("def ") and path.read_text().splitlines()[r["line"] - 1].strip() == r["code"].splitlines()[0]
        assert r["code_tokens"] == code2doc._code_tokens(clean_code(r["code"]))
        assert not any(t.startswith("#") or not t.strip() for t in r["code_tokens"])
    assert by_name["Point.quadrant"]["docstring"].endswith("Points on an axis belong to the quadrant after it.")
    assert by_name["Point.quadrant"]["docstring_tokens"][:3] == ["Quadrant", "number", ","]
    assert "@property" not in by_name["Point.quadrant"]["code"]
    assert by_name["Point.norm"]["code"].splitlines()[1] == '    """Return the Euclidean length of the vector to this point."""'
    assert by_name["polygon_area"]["docstring_tokens"][-1] == "."
    assert ":param" not in " ".join(by_name["polygon_area"]["docstring_tokens"])
    with pytest.raises(SyntaxError):
        extract_functions((SRCTREE / "broken.py").read_text())


# ----------------------------------------------------------------------------------- building


def test_fixture_tree_is_meaningful():
    """The spread split puts the duplicated `clamp` in two splits and uses all three splits."""
    split = {p: split_of_file(SRCTREE / p, SPREAD) for p in ["pkg/clamp_a.py", "pkg/util/clamp_b.py", "pkg/geometry.py"]}
    assert len(set(split.values())) == 3


def test_a_build_that_leaves_a_split_empty_is_refused(tmp_path):
    """The default 90/5/5 shares put none of the fixture's four files in test: no run could read it
    (it used to be written empty, exit 0). A share of 0 is a split asked to be empty."""
    with pytest.raises(DataError, match=r"srctree: the test split is empty \(8 documented functions in 4 files; "
                                        r".*90,5,5 percent to train,valid,test\): give more source files"):
        build_code2doc([SRCTREE], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("percent", [SPREAD, {"train": 100, "valid": 0, "test": 0}])
def test_build_invariants(tmp_path, percent):
    manifest = build_code2doc([SRCTREE], tmp_path / "out", percent=percent)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["builder_version"] == BUILDER_VERSION and manifest["sources"] == [SRCTREE.as_posix()]
    assert manifest["skipped_files"] == [{"path": "broken.py", "reason": manifest["skipped_files"][0]["reason"]}]
    assert manifest["skipped_files"][0]["reason"].startswith("SyntaxError")

    listed = {f["path"]: split for split in SPLITS for f in manifest["files"][split]}
    assert sorted(listed) == ["pkg/__init__.py", "pkg/clamp_a.py", "pkg/geometry.py", "pkg/util/clamp_b.py"]  # no tests/
    records = {split: _lines(out / f"{split}.jsonl") for split in SPLITS}
    seen = {}
    for split in SPLITS:
        assert manifest["counts"][split] == len(records[split])
        for f in manifest["files"][split]:
            assert split_of_file(SRCTREE / f["path"], percent) == split
        for r in records[split]:
            assert CODEXGLUE_FIELDS <= set(r) and r["partition"] == split and listed[r["path"]] == split
            key = (" ".join(r["code_tokens"]), " ".join(r["docstring_tokens"]))
            assert key not in seen, f"{r['func_name']} in {split} and {seen[key]}"
            seen[key] = split

    # `clamp` exists once, in the highest-priority split of its two files (the first path if tied).
    clamps = [(split, r["path"]) for split in SPLITS for r in records[split] if r["func_name"] == "clamp"]
    homes = sorted((SPLITS.index(listed[p]), p) for p in ["pkg/clamp_a.py", "pkg/util/clamp_b.py"])
    assert clamps == [(SPLITS[homes[0][0]], homes[0][1])]
    assert manifest["duplicates_removed"] == 1


def test_build_is_deterministic_and_atomic(tmp_path):
    first = build_code2doc([SRCTREE], tmp_path / "a", percent=SPREAD)
    second = build_code2doc([str(SRCTREE)], tmp_path / "b", percent=SPREAD)
    assert first == second
    for name in ["train.jsonl", "valid.jsonl", "test.jsonl", "manifest.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    build_code2doc([SRCTREE], tmp_path / "a", percent=SPREAD)  # rebuilding over a dataset replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp dirs left behind

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dataset peftlab wrote"):
        build_code2doc([SRCTREE], tmp_path / "mine", percent=SPREAD)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_build_skips_undecodable_and_rejects_empty(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(SRCTREE, tree)
    (tree / "latin1.py").write_bytes(b'def f():\n    """Caf\xe9 au lait, tr\xe8s bien."""\n    return 1\n')
    manifest = build_code2doc([tree], tmp_path / "out", exclude_tests=False, percent=SPREAD)
    assert [s["path"] for s in manifest["skipped_files"]] == ["broken.py", "latin1.py"]
    assert "UnicodeDecodeError" in manifest["skipped_files"][1]["reason"]
    names = [r["func_name"] for split in SPLITS for r in _lines(tmp_path / "out" / f"{split}.jsonl")]
    assert "check_polygon_area" in names  # tests/ is included when asked

    with pytest.raises(DataError, match="no documented functions found in .*broken.py"):
        build_code2doc([SRCTREE / "broken.py"], tmp_path / "none")
    with pytest.raises(DataError, match="no such file"):
        build_code2doc([tmp_path / "missing"], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_load_split(tmp_path):
    manifest = build_code2doc([SRCTREE], tmp_path / "out", percent=SPREAD)
    for split in SPLITS:
        examples = load_code2doc_split(tmp_path / "out", split, target_field="docstring")
        assert len(examples) == manifest["counts"][split]
        assert all('"""' not in ex.code and ex.path and ex.line > 0 for ex in examples)
    assert load_code2doc_split(tmp_path / "out", "validation") == load_code2doc_split(tmp_path / "out" / "valid.jsonl", "x")
    with pytest.raises(DataError, match="unknown split 'eval'"):
        load_code2doc_split(tmp_path / "out", "eval")


# ------------------------------------------------------------------------------------- stdlib


def test_stdlib_sources():
    files = stdlib_sources()
    assert len(files) > 500 and files == sorted(files)
    root = Path(sysconfig.get_paths()["stdlib"])
    relative = {p.relative_to(root).as_posix() for p in files}
    assert {"os.py", "json/decoder.py", "asyncio/streams.py"} <= relative
    for rel in relative:
        assert not {"test", "tests", "idle_test", "site-packages"} & set(rel.split("/")[:-1]), rel
    assert len(stdlib_sources(exclude_tests=False)) > len(files)


@pytest.fixture(scope="module")
def stdlib_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib") / "code2doc"
    return out, build_code2doc(stdlib_sources(), out)


def test_stdlib_corpus(stdlib_corpus):
    out, manifest = stdlib_corpus
    counts = manifest["counts"]
    # Python 3.11.7 gives about 6100 / 90 / 360: a split holds whole files, so a few big files
    # decide its size and valid/test need not be an exact 5% each.
    assert counts["train"] > 2000 and counts["valid"] > 50 and counts["test"] > 50
    assert counts["train"] > 10 * max(counts["valid"], counts["test"])
    examples = load_code2doc_split(out, "test")
    assert len(examples) == counts["test"]
    assert all(ex.target and ex.code.count("\n") >= 1 for ex in examples)
    parsed = sum(1 for ex in examples if _parses(ex.code))
    assert parsed == len(examples)  # the stdlib parses, and cleaning keeps it parseable


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def test_default_dir_builds_once_and_reuses(tmp_path, monkeypatch):
    calls = []

    def fake_build(sources, out_dir, **kwargs):
        calls.append(len(sources))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "manifest.json").write_text("{}")
        return {}

    monkeypatch.setattr(code2doc, "build_code2doc", fake_build)
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "env-cache"))
    first = default_code2doc_dir()
    assert first.parent == tmp_path / "env-cache" and f"v{BUILDER_VERSION}" in first.name
    assert default_code2doc_dir() == first and len(calls) == 1 and calls[0] > 500
    assert default_code2doc_dir(tmp_path / "explicit").parent == tmp_path / "explicit" and len(calls) == 2


# ------------------------------------------------------------------------------------ prompts


def test_render_prompt():
    example = Code2DocExample(func_name="add", code="def add(a, b):\n    return a + b", target="Add.", path="m.py")
    assert render_prompt(SEED000_TEMPLATE, example) == (
        "This is the function name:\nadd\nCode:\ndef add(a, b):\n    return a + b\n"
        "Provide the documentation for the following code:\n"
    )
    assert render_prompt("{path}: {func_name} {{literal}}", {"func_name": "f", "code": "", "path": "p.py"}) == "p.py: f {literal}"
    with pytest.raises(ConfigError, match=r"unknown field \{target\}; allowed fields: func_name, code, path"):
        render_prompt("{code} -> {target}", example)
    with pytest.raises(ConfigError, match="malformed"):
        render_prompt("{code", example)
