"""Property test: the data readers give back, record for record, what a writer put in every format,
whatever Unicode the fields hold — line and paragraph separators, NEL, form feed, vertical tab, the
file/group/record separators, a byte-order mark inside a field, NUL, carriage returns, quotes,
delimiters, astral characters, combining marks and (through JSON escapes) lone surrogates.

Seeded random fields (a fixed number of draws per format, so the test is deterministic and short),
plus the hand-picked cases the hostile-user report found (issue 35)."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from peftlab.data.code2doc import read_codexglue_jsonl
from peftlab.data.instruct import read_instruction_file
from peftlab.data.textfile import jsonl_lines
from peftlab.tasks.classify import read_records

NASTY = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\ufeff", "\x00", "\r", "\n",
         "\r\n", '"', "'", ",", "\t", "\\", "é", "e\u0301", "𝔘", "😀", "\u200b", "\U0010ffff", " "]
SURROGATES = ["x\ud800x", "x\udfffx", "x\udc80x"]  # lone: JSON joins an escaped pair into one character
DRAWS = 60


def _field(rng: random.Random, alphabet: list[str]) -> str:
    return "".join(rng.choice(alphabet) if rng.random() < 0.6 else rng.choice("abc xyz") for _ in range(rng.randint(0, 12)))


def _records(rng: random.Random, alphabet: list[str], n: int = 8) -> list[dict]:
    return [{"text": _field(rng, alphabet), "label": rng.choice(["yes", "no", "a\u2028b"])} for _ in range(n)]


def _bom(rng: random.Random) -> str:
    return "\ufeff" if rng.random() < 0.5 else ""


@pytest.mark.parametrize("ascii_only", [False, True], ids=["raw", "escaped"])
def test_jsonl_records_round_trip(tmp_path, ascii_only):
    rng = random.Random(1 + ascii_only)
    alphabet = NASTY + (SURROGATES if ascii_only else [])  # a lone surrogate is writable only as \\uXXXX
    for draw in range(DRAWS):
        recs = _records(rng, alphabet)
        end = rng.choice(["\n", "\r\n"])
        path = tmp_path / f"train{draw}.jsonl"
        path.write_text(_bom(rng) + "".join(json.dumps(r, ensure_ascii=ascii_only) + end for r in recs),
                        encoding="utf-8", newline="")
        assert [r for _, r in read_records(path)] == recs


@pytest.mark.parametrize("terminator", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_csv_records_round_trip(tmp_path, terminator):
    rng = random.Random(7 + len(terminator))
    for draw in range(DRAWS):
        quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
        # csv's writer quotes a field only for characters of its own line terminator: with "\n" a bare "\r"
        # goes out unquoted, which RFC 4180 (and every reader) takes as a line break: not a reader's fault
        bare_cr = quoting == csv.QUOTE_MINIMAL and terminator == "\n"
        recs = _records(rng, [c for c in NASTY if not (bare_cr and c == "\r")])
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["text", "label"], lineterminator=terminator, quoting=quoting)
        w.writeheader()
        w.writerows(recs)
        path = tmp_path / f"train{draw}.csv"
        path.write_text(_bom(rng) + buf.getvalue(), encoding="utf-8", newline="")
        got = [r for _, r in read_records(path)]
        assert got == recs


def test_tsv_records_round_trip(tmp_path):
    rng = random.Random(11)
    alphabet = [c for c in NASTY if c not in ("\t", "\n", "\r", "\r\n")]  # TSV has no quoting: no tabs, no breaks
    for draw in range(DRAWS):
        recs = _records(rng, alphabet)
        path = tmp_path / f"train{draw}.tsv"
        path.write_text(_bom(rng) + "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in recs),
                        encoding="utf-8", newline="")
        assert [r for _, r in read_records(path)] == recs


def test_instruction_files_round_trip(tmp_path):
    rng = random.Random(13)
    for draw in range(DRAWS):
        recs = [{"instruction": _field(rng, NASTY) or "x", "input": _field(rng, NASTY), "output": _field(rng, NASTY)}
                for _ in range(5)]
        jsonl, listed = tmp_path / f"a{draw}.jsonl", tmp_path / f"a{draw}.json"
        jsonl.write_text(_bom(rng) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        listed.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
        for path in (jsonl, listed):
            got = read_instruction_file(path)
            assert [(g.instruction, g.input, g.response) for g in got] == [
                (r["instruction"], r["input"], r["output"]) for r in recs]


def test_codexglue_jsonl_keeps_every_record(tmp_path):
    rng = random.Random(17)
    for draw in range(DRAWS // 3):
        recs = [{"func_name": _field(rng, NASTY), "code": "def f():\n    return 1\n",
                 "docstring_tokens": [_field(rng, NASTY) for _ in range(3)]} for _ in range(6)]
        path = tmp_path / f"c{draw}.jsonl"
        path.write_text(_bom(rng) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        for got in (read_codexglue_jsonl(path), read_codexglue_jsonl(path, sample=100)):
            assert sorted(g.func_name for g in got) == sorted(r["func_name"] for r in recs)
            assert sorted(g.target for g in got) == sorted(" ".join(r["docstring_tokens"]) for r in recs)


def test_the_reported_cases(tmp_path):
    # a CSV field with U+2028 stayed one record, its label did not become a class of its own
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"one\u2028two",pos\nthree,neg\n', encoding="utf-8")
    assert [r for _, r in read_records(path)] == [{"text": "one\u2028two", "label": "pos"},
                                                  {"text": "three", "label": "neg"}]
    # a quoted multi-line CSV field keeps its line break; the next row is numbered by where it starts
    path.write_text('text,label\n"line one\nline two",pos\nthree,neg\n', encoding="utf-8")
    assert read_records(path) == [(2, {"text": "line one\nline two", "label": "pos"}), (4, {"text": "three", "label": "neg"})]
    # valid JSONL with a raw U+2028 inside a string is read, not refused
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a\u2028b", "label": "x"}\n', encoding="utf-8")
    assert read_records(path) == [(1, {"text": "a\u2028b", "label": "x"})]
    # lines are numbered by "\n" only: an error names the line an editor shows
    path.write_text('{"text": "a\u2028b", "label": "x"}\n\n{"text": \n', encoding="utf-8")
    with pytest.raises(Exception, match=r"train\.jsonl:3: not valid JSON"):
        read_records(path)
    # a row with more fields than the header is refused with its line
    csvp = tmp_path / "valid.csv"
    csvp.write_text("text,label\na,b,c\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"valid\.csv:2: 3 fields, the header has 2"):
        read_records(csvp)


def test_jsonl_lines_split_at_newline_only():
    text = "a\u2028b\x85c\x0cd\r\n\n  \ne\r"
    assert jsonl_lines(text) == [(1, "a\u2028b\x85c\x0cd"), (4, "e")]
