"""``peftlab list methods|tasks|models``: what peftlab knows, one line each.

A method's or task's line is its ``summary`` (a class attribute, where a module holds several) or
else the first sentence of its module's docstring, which opens with the paper or the data; a shipped
model's is the first sentence of its model card.
"""

from __future__ import annotations

import re
import sys


def first_sentence(text: str) -> str:
    """The first sentence of ``text``'s first paragraph, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].replace("**", "").split())
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", paragraph, maxsplit=1)[0]
    return sentence[:-1] if sentence.endswith("::") else sentence  # reST's literal-block marker


def summary_of(cls) -> str:
    """A registered class's one line: its ``summary``, its own docstring (not the signature a
    dataclass writes when there is none) or its module's docstring, first sentence."""
    own = getattr(cls, "summary", None)
    if own:
        return own
    doc = cls.__doc__ or ""
    if doc and not doc.startswith(cls.__name__ + "("):
        return first_sentence(doc)
    return first_sentence(sys.modules[cls.__module__].__doc__ or "")


def lines(what: str) -> list[str]:
    """The listing of ``methods``, ``tasks`` or ``models``, aligned."""
    if what == "methods":
        from peftlab.methods.registry import get_method, method_names

        rows = [(name, summary_of(get_method(name))) for name in method_names()]
    elif what == "tasks":
        from peftlab.tasks import get_task, task_names

        rows = [(name, summary_of(get_task(name))) for name in task_names()]
    elif what == "models":
        rows = _models()
    else:
        raise ValueError(f"list: methods, tasks or models, not {what!r}")
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {text}".rstrip() for name, text in rows]


def _models() -> list[tuple[str, str]]:
    """The shipped short names (their cards' first sentence), then the architectures with a table."""
    from peftlab.models.arch import table_types
    from peftlab.models.loading import short_names

    rows = []
    for name, path in short_names().items():
        card = path / "README.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # the Hub metadata block
        paragraphs = [p for p in body.split("\n\n") if p.strip() and not p.lstrip().startswith(("#", "|"))]
        rows.append((name, first_sentence(paragraphs[0]) if paragraphs else str(path)))
    rows.append(("(hub id or directory)", "any model of these types: " + ", ".join(table_types())))
    return rows
