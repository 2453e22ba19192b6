"""Filters of the pretraining corpus: files that look generated, exact and near duplicates (MinHash
of word shingles through LSH, datasketch), and functions found verbatim in other files."""

from __future__ import annotations

import re
from typing import Optional

from peftlab.errors import ConfigError


def looks_generated(text: str) -> Optional[str]:
    """Why a file looks generated or minified (The Stack's filters), or None."""
    lines = text.splitlines() or [""]
    if max(map(len, lines)) > 1000:
        return "line over 1000 characters"
    if sum(map(len, lines)) / len(lines) > 100:
        return "mean line over 100 characters"
    if sum(c.isalnum() for c in text) < 0.25 * len(text):
        return "under 25% alphanumeric"
    return None


def shingles(text: str, n: int) -> set[bytes]:
    words = re.findall(r"\w+", text)
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


class NearDuplicates:
    """MinHash-LSH over files in insertion order (datasketch); ``first_match`` says which earlier
    file (kept or forbidden) a new one nearly duplicates."""

    def __init__(self, threshold: float, num_perm: int, shingle: int):
        try:
            from datasketch import MinHashLSH
        except ImportError:
            raise ConfigError("building a corpus needs datasketch: pip install 'peftlab[pretrain]'") from None

        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.hashes: dict[str, object] = {}

    def minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch(sorted(shingles(text, self.shingle)))
        return m

    def matches(self, m) -> list[str]:
        """Keys of the files ``m`` nearly duplicates (LSH candidates whose estimate passes)."""
        return sorted(k for k in self.lsh.query(m) if self.hashes[k].jaccard(m) >= self.threshold)

    def add(self, key: str, m) -> None:
        self.lsh.insert(key, m)
        self.hashes[key] = m


def normal_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]


class FunctionIndex:
    """Functions (as stripped, non-empty lines) to look for verbatim inside other files."""

    def __init__(self, min_lines: int):
        self.min_lines = min_lines
        self.by_first: dict[str, list[list[str]]] = {}

    def add_file(self, text: str) -> None:
        import ast

        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                body = normal_lines("\n".join(lines[node.lineno - 1:node.end_lineno]))
                if len(body) >= self.min_lines and body[0].startswith(("def ", "async def ")):
                    self.by_first.setdefault(body[0], []).append(body)

    def found_in(self, text: str) -> bool:
        lines = normal_lines(text)
        for i, line in enumerate(lines):
            for body in self.by_first.get(line, ()):
                if lines[i:i + len(body)] == body:
                    return True
        return False


# ----------------------------------------------------------------------------------------- build
