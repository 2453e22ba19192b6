"""Specs built in layers: run-config data assembled from several files and sections (a base run
config, a spec's overrides, a task's, a method's), each value remembering where it came from, so an
error names the file and line that set it. Shared by bench and search specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.config import read_config_yaml, set_path
from peftlab.errors import ConfigError


class Layers:
    """Plain run-config data assembled from several places, with where each value came from."""

    def __init__(self):
        self.data: dict = {}
        self.where: dict[tuple, str] = {}

    def put(self, path: tuple, value: Any, source: str, lines: dict, root: tuple, text: str = "") -> None:
        """Set run-config ``path`` to ``value``, which sits at ``root`` in the file ``source``
        (whose line numbers are ``lines``)."""
        self.data = set_path(self.data, path, value, text or ".".join(map(str, path))) if path else dict(value)
        self.where = {p: w for p, w in self.where.items() if p[: len(path)] != path}
        for p, ln in lines.items():
            if p[: len(root)] == root and len(p) > len(root):
                self.where[path + p[len(root):]] = location(source, ln)
        self.where[path] = location(source, line_of(lines, root))

    def put_overrides(self, overrides: dict, source: str, lines: dict, root: tuple, prefix: tuple = ()) -> None:
        """Each ``dotted.key: value`` over what is there. A mapping given for a section of the run
        config (``train: {lr: 0.01}``) edits the fields it names and keeps the others; a mapping for a
        field whose value is itself a mapping or a named config (``eval.select``, ``data.task``,
        ``model.config``) replaces it whole, as any value does."""
        for key, value in overrides.items():
            path = prefix + tuple(int(p) if p.isdigit() else p for p in str(key).split("."))
            if isinstance(value, dict) and value and is_section(path):
                self.put_overrides(value, source, lines, root + (key,), path)
                continue
            self.put(path, value, source, lines, root + (key,), text=f"{'.'.join(map(str, path))}: {value!r}")


def is_section(path: tuple) -> bool:
    """Whether ``path`` names a section of the run config: a plain config dataclass (``train``,
    ``eval``, ``model``, ``data``), whose fields a mapping edits one by one."""
    import dataclasses
    import typing

    from peftlab.config import NamedConfig
    from peftlab.schema import RunConfig

    cls = RunConfig
    for part in path:
        if not (dataclasses.is_dataclass(cls) and isinstance(part, str)):
            return False
        hint = typing.get_type_hints(cls).get(part)
        if hint is None:
            return False
        cls = hint
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and not issubclass(cls, NamedConfig)


def line_of(lines: dict, path: tuple):
    """The line of ``path`` or of its nearest parent that has one (an int, or the text of a
    command-line override)."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path)


def location(source: str, line) -> str:
    if isinstance(line, str):  # a command-line override names itself
        return line
    return f"{source}:{line}" if line else source


def base_config(spec, data: dict, lines: dict, path: Path) -> tuple[dict, dict, str]:
    """The base run config's plain data, its line numbers and the file they refer to."""
    if spec.base is None:
        return {}, {}, str(path)
    if isinstance(spec.base, dict):
        return dict(data["base"]), lines, str(path)
    where = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not where.is_file():
        raise ConfigError(f"{location(str(path), line_of(lines, ('base',)))}: base: no run config {where} (a path is "
                          f"relative to the spec's directory)")
    base, base_lines = read_config_yaml(where)
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: a run config is a mapping, got {type(base).__name__}")
    return base, base_lines, str(where)


