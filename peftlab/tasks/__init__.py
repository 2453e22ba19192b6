"""Tasks: one small module per dataset family, and the registry that names them.

A run's ``data.task`` is a task config (``code2doc``, or ``{name: classify, path: x.jsonl, ...}``),
dispatched by ``name`` through ``peftlab.tasks.registry`` exactly as methods are. Adding a task is one
file (its config dataclass: how to read or build its splits, render an example, score predictions)
and one line there.
"""

from __future__ import annotations

from peftlab.tasks.base import Example, TaskConfig
from peftlab.tasks.registry import default_task, get_task, task_names

__all__ = ["Example", "TaskConfig", "default_task", "get_task", "task_names"]
