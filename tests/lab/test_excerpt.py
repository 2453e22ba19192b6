"""The excerpt under a comparison's table: a few fixed test rows side by side (input, reference,
each run's output), rendered from a fixture and built from run directories (peftlab.lab.excerpt)."""

import json
from pathlib import Path

from peftlab.lab.excerpt import build_excerpt, excerpt_markdown, shorten, write_excerpt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "excerpt.json"


def test_the_excerpt_renders_from_a_fixture():
    lines = excerpt_markdown(json.loads(FIXTURE.read_text())).splitlines()
    assert lines[0] == "| Function | Reference | LoRA r=32 + hyper alignment | zero-shot |"
    assert lines[1] == "|---|---|---|---|"
    # a decorator left out, a signature over two lines joined, the lines after it counted
    assert lines[2] == ("| `def moving_average(values, window):` … (+4 lines) | Return the moving averages of values "
                        "over window . | Return a list of the averages of values . | Return a list of the same number "
                        "of the same number of the same number |")
    # a long signature cut; a pipe escaped; an empty output and a missing one told apart
    assert lines[3].startswith("| `def either(self, a_flag_with_a_long_name_indeed, another_flag_with_a_lo…` … (+1 line) |")
    assert lines[3].endswith("| Return a \\| b . | (empty) | – |")
    assert lines[4] == "| – | Gone from the data . | Return the file . | Return a file . |"  # no input found
    assert lines[6] == ("The first 3 test rows (inputs whole in excerpt.json; every row in each run's predictions.jsonl). "
                        "Decoding chosen on validation — LoRA r=32 + hyper alignment: num_beams 4, "
                        "no_repeat_ngram_size 3.")


def test_shorten_keeps_a_signature_and_counts_the_rest():
    assert shorten("def f(a, b):\n    return a + b") == "def f(a, b): … (+1 line)"
    assert shorten("def f(a):\n    pass", width=8) == "def f(a… … (+1 line)"
    assert shorten("Sort these numbers") == "Sort these numbers"  # not code: its first line
    assert shorten("first line\nsecond line") == "first line … (+1 line)"
    assert shorten("") == ""


def _run(directory: Path, method: str, predictions: list[dict]) -> dict:
    directory.mkdir(parents=True)
    (directory / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return {"method": method, "run_dir": str(directory), "decoding": {"num_beams": 2}}


def test_the_rows_are_the_first_every_run_scored_in_test_order(tmp_path):
    rows = [{"func_name": n, "line": i, "prediction": f"a {n}", "reference": f"ref {n}"} for i, n in enumerate("pqrst")]
    a = _run(tmp_path / "a", "A", rows)
    b = _run(tmp_path / "b", "B", [dict(r, prediction=f"b {r['func_name']}") for r in rows if r["func_name"] != "q"])
    ex = build_excerpt([a, b], n=3)
    assert [r["row"]["func_name"] for r in ex["rows"]] == ["p", "r", "s"]  # q: not scored by B
    assert ex["rows"][1]["outputs"] == ["a r", "b r"] and ex["rows"][1]["reference"] == "ref r"
    assert ex["rows"][0]["input"] is None  # no config.yaml to read the inputs again from
    assert [r["method"] for r in ex["runs"]] == ["A", "B"]
    write_excerpt(tmp_path, ex)
    assert json.loads((tmp_path / "excerpt.json").read_text()) == ex
    assert (tmp_path / "excerpt.md").read_text() == excerpt_markdown(ex) + "\n"
