"""YAML config files read with the line of every value, so that errors name ``file:line: field``.

``read_yaml`` parses one file; ``read_config_yaml`` follows ``extends: OTHER.yaml``. Every duplicate
key of a file is named at once (YAML itself keeps the last without a word).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError, gathered


def _node_lines(node, path: tuple, out: dict) -> None:
    import yaml

    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, val_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _node_lines(val_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out)


def read_yaml(path: str | Path) -> tuple[Any, dict]:
    """Parse a YAML file into plain data plus a map ``field path -> line number``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if data is None:  # an empty file (or only comments) would silently be an all-defaults run
        raise ConfigError(f"{path}: config file is empty")
    _no_duplicate_keys(node, path)
    lines: dict = {}
    _node_lines(node, (), lines)
    return data, lines


EXTENDS = "extends"


def read_config_yaml(path: str | Path, _seen: tuple = ()) -> tuple[Any, dict]:
    """``read_yaml``, following ``extends: OTHER.yaml`` (relative to the file): the other file's data
    with this file's deep-merged over it (mappings merge key by key; lists and values replace). A
    value's location stays that of the file that set it, so an error names the right file and line."""
    data, lines = read_yaml(path)
    if not isinstance(data, dict) or EXTENDS not in data:
        return data, lines
    parent_name = data[EXTENDS]
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}:{lines.get((EXTENDS,))}: {EXTENDS}: give the path of another config file")
    parent = (Path(path).parent / parent_name).resolve()
    if parent in _seen:
        raise ConfigError(f"{path}:{lines.get((EXTENDS,))}: {EXTENDS}: {parent_name} extends this file again (a loop)")
    if not parent.is_file():
        raise ConfigError(f"{path}:{lines.get((EXTENDS,))}: {EXTENDS}: no config {parent} (the path is relative to "
                          f"{Path(path).parent})")
    base, base_lines = read_config_yaml(parent, _seen + (Path(path).resolve(),))
    rel = _shown(parent)
    merged_lines = {p: (f"{rel}:{ln}" if isinstance(ln, int) else ln) for p, ln in base_lines.items()}
    own = {k: v for k, v in data.items() if k != EXTENDS}
    for p, ln in lines.items():
        if p[:1] != (EXTENDS,):
            merged_lines[p] = ln if p else merged_lines.get(p, ln)
    return deep_merge(base, own), merged_lines


def deep_merge(base: Any, top: Any) -> Any:
    """``top`` over ``base``: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: deep_merge(base.get(k), v) if k in base else v for k, v in top.items()}}
    return top


def _shown(path: Path) -> str:
    """A path as messages show it: relative to the working directory where it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _no_duplicate_keys(node, path: Path) -> None:
    """YAML keeps the last of two equal keys without a word; a config that says a thing twice is
    a mistake (two edits of one field), so name both lines."""
    import yaml

    found: list[ConfigError] = []

    def walk(node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, val_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    found.append(ConfigError(f"{path}:{line}: duplicate key {key_node.value!r} (first set on "
                                             f"line {seen[key_node.value]}); keep one"))
                seen.setdefault(key_node.value, line)
                walk(val_node)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(node)
    if found:
        raise gathered(found)
