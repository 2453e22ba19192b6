"""Reading the text files users bring (JSON Lines, CSV, TSV), record for record.

A record is never split or joined by a character that is not the format's own line break:

- **JSON Lines** ends a line at ``"\\n"`` only (a ``"\\r"`` before it is dropped), as the format
  says. ``str.splitlines`` also breaks at U+2028/U+2029, NEL (U+0085), form feed, vertical tab and
  the file/group/record separators, which valid JSON may hold raw inside a string (``json.dumps(...,
  ensure_ascii=False)`` writes U+2028 as is): a record holding one became two invalid halves.
- **CSV / TSV** is read by the ``csv`` module from a stream opened with ``newline=""``, as its
  documentation requires: a quoted field keeps its line breaks (``"\\r\\n"`` included), and only
  ``"\\n"``, ``"\\r"`` and ``"\\r\\n"`` end a row.
- A UTF-8 byte-order mark is dropped (it is not part of the first field); other code points,
  NUL included, pass through as they are.

Errors name ``file:line``; line numbers count ``"\\n"`` breaks (what an editor shows for such files).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

from peftlab.errors import DataError


def read_user_text(path: Path) -> str:
    """A UTF-8 file's text without a byte-order mark; DataError naming the file if it cannot be read."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # line breaks as written: a field may hold "\r\n"
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for every non-blank line of JSON Lines text, split at ``"\\n"`` only."""
    lines = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip():
            lines.append((n, line))
    return lines


def json_record(line: str, where: str) -> dict:
    """One JSON object from one line of a JSONL file; ``where`` (``path:line``) names it in errors."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def jsonl_records(path: Path, text: Optional[str] = None) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every record of a JSON Lines file."""
    text = read_user_text(path) if text is None else text
    return [(n, json_record(line, f"{path}:{n}")) for n, line in jsonl_lines(text)]


def csv_records(path: Path, text: Optional[str] = None, *, tsv: bool = False,
                fieldnames: Optional[Sequence[str]] = None) -> list[tuple[int, dict]]:
    """``(first line number, row)`` for every row of a CSV (or TSV: tab-separated, no quoting) file
    with a header row, or with ``fieldnames`` for a file without one. Blank rows are skipped; a row
    with more fields than the header is refused, one with fewer gets ``None`` for the missing ones."""
    text = read_user_text(path) if text is None else text
    what = "TSV" if tsv else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    names = list(fieldnames) if fieldnames else None
    rows: list[tuple[int, dict]] = []
    end = 0  # the last line of the previous row
    try:
        for fields in reader:
            first, end = end + 1, reader.line_num
            if not fields:
                continue
            if names is None:
                names = fields
                continue
            if len(fields) > len(names):
                raise DataError(f"{path}:{first}: {len(fields)} fields, the header has {len(names)} "
                                f"({', '.join(names)})")
            rows.append((first, dict(zip(names, fields + [None] * (len(names) - len(fields))))))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid {what} ({e})") from None
    return rows
