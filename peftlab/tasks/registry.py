"""The tasks' registry: each task's name and where its config class lives (imported on first use).

Adding a task is one file (its config dataclass: how to read or build its splits, render an example,
score predictions) and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.tasks.base import TaskConfig

_REGISTRY = {
    "code2doc": "peftlab.tasks.code2doc:Code2DocTask",
    "classify": "peftlab.tasks.classify:ClassifyTask",
    "method_name": "peftlab.tasks.method_name:MethodNameTask",
    "doc_match": "peftlab.tasks.doc_match:DocMatchTask",
    "exception_type": "peftlab.tasks.exception_type:ExceptionTypeTask",
    "line_completion": "peftlab.tasks.line_completion:LineCompletionTask",
    "glue": "peftlab.tasks.glue:GlueTask",
    "seq2seq": "peftlab.tasks.seq2seq:Seq2SeqTask",
    "instruction": "peftlab.tasks.instruction:InstructionTask",
    "dataset": "peftlab.tasks.dataset:DatasetTask",
}


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> type[TaskConfig]:
    """The task config class registered as ``name``; ``KeyError`` with the nearest name otherwise."""
    if name not in _REGISTRY:
        from peftlab.config import suggest

        raise KeyError(f"unknown task {name!r}{suggest(str(name), _REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def default_task() -> TaskConfig:
    return get_task("code2doc")()
