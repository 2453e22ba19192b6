"""Typed run configs: YAML files and ``key=value`` overrides, validated with file/line/field errors.

A config is a tree of frozen dataclasses. ``from_dict`` builds one from plain data and checks every
key and type on the way, so a typo fails at load time with the nearest valid key suggested, not an
hour into a run; every error of a file is reported at once (``peftlab.errors.ConfigErrors``). YAML is
parsed with node positions kept (``peftlab.yaml_lines``), so errors name ``file:line: field``.
Library code never mutates a config; ``replace``/``apply_overrides`` return new ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from peftlab.errors import ConfigError, gathered
from peftlab.yaml_lines import EXTENDS, deep_merge, read_config_yaml, read_yaml  # noqa: F401  (re-exported)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Validation of plain data (dict/list/scalars) against dataclass types
# --------------------------------------------------------------------------------------------
class _Where:
    """Turns a field path into a location string, using YAML line numbers when known."""

    def __init__(self, source: str | None = None, lines: dict[tuple, int] | None = None):
        self.source, self.lines = source, lines or {}

    def __call__(self, path: tuple) -> str:
        field = ".".join(str(p) for p in path) or "<top level>"
        if self.source is None:
            return field
        blamed, line = path, self.lines.get(path)
        while line is None and blamed:
            blamed = blamed[:-1]
            line = self.lines.get(blamed)
        if isinstance(line, str):  # the value came from a command-line override
            return f"{line}: {field}"
        # a check of several fields (or of a whole list item) lands on the file's line of their
        # parent; name the command-line values inside it too, or the file takes the blame for them
        inside = [v for k, v in self.lines.items() if isinstance(v, str) and k[: len(path)] == path]
        also = f" (with {', '.join(inside)})" if inside else ""
        return f"{self.source}:{line}: {field}{also}" if line else f"{self.source}: {field}{also}"


_YAML_BOOLS = {False: ("no", "false", "off", "n"), True: ("yes", "true", "on", "y")}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: tuple, where: _Where) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X] given a value: X's own error says more than the union's
            return _coerce(value, options[0], path, where)
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path, where)
            except ConfigError as e:
                errors.append((arg, e))
        if len(errors) == 1 and type(None) in args:  # Optional[X]: X's own words say more
            raise errors[0][1]
        # a value shaped like exactly one arm (a list for a list type, a mapping for a config)
        # gets that arm's own error, which names the inner field
        shaped = [e for arg, e in errors if _shape_matches(value, arg)]
        if len(shaped) == 1:
            raise shaped[0]
        raise ConfigError(f"{where(path)}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/yes/off/on as a boolean
            value = next((a for a in get_args(tp) if a in _YAML_BOOLS[value]), value)
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(f"{where(path)}: expected one of {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if hasattr(tp, "dispatch"):  # polymorphic: {"name": ..., **fields} -> registered subclass
            return _dispatch(tp, value, path, where)
        return _build(tp, value, path, where)
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(path)}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = _each(((i, v) for i, v in enumerate(value)), item_tp, path, where)
        return tuple(items.values()) if origin is tuple else list(items.values())
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(path)}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): v for k, v in _each(value.items(), val_tp, path, where).items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where(path)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where(path)}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e-4 as a string (YAML 1.1); accept it
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where(path)}: expected a number, got {value!r}")
        if not math.isfinite(number):  # no field means anything by nan/inf; "no limit" is null
            raise ConfigError(f"{where(path)}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where(path)}: expected a string, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another library's name for a field of a config class (its ``aliases``): ``field`` is peftlab's
    name, ``convert`` turns the other library's value into peftlab's (None: the same value)."""

    field: str
    convert: typing.Optional[typing.Callable[[Any], Any]] = None


def unaliased(cls: type, data: dict) -> tuple[dict, dict[str, str]]:
    """``data`` with each key that ``cls.aliases`` names (``alias -> field`` or ``alias -> Alias``)
    renamed to its field and its value converted, and ``{field: alias}`` for those renamed. A field
    given under both names is a ``FieldError`` naming both (``field`` is the alias)."""
    aliases = getattr(cls, "aliases", {})
    out, renamed = dict(data), {}
    for alias in [k for k in data if k in aliases]:
        spec = aliases[alias] if isinstance(aliases[alias], Alias) else Alias(aliases[alias])
        if spec.field in data:
            raise FieldError(alias, f"another name for {spec.field!r}, which is given too: give one of them")
        value = out.pop(alias)
        try:
            out[spec.field] = spec.convert(value) if spec.convert else value
        except (TypeError, ValueError) as e:
            raise FieldError(alias, str(e).removeprefix(f"{alias}: ")) from None
        renamed[spec.field] = alias
    return out, renamed


class _Aliased(type):
    """Metaclass of ``NamedConfig``: ``LoraConfig(lora_alpha=32)`` is ``LoraConfig(alpha=32)``, as a
    YAML config's ``lora_alpha: 32`` is (``aliases``); the config keeps peftlab's names only."""

    def __call__(cls, *args, **kwargs):
        if kwargs and getattr(cls, "aliases", None):
            try:
                kwargs, _ = unaliased(cls, kwargs)
            except FieldError as e:
                raise TypeError(f"{cls.__name__}: {e.field}: {e}") from None
        return super().__call__(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class NamedConfig(metaclass=_Aliased):
    """Base of configs written as ``{name: <registry name>, **fields}`` (methods, tasks); a subclass
    adds ``dispatch(name)`` returning the class registered under ``name``, and may accept other
    libraries' field names in ``aliases`` (``{"lora_alpha": "alpha"}``, or an ``Alias`` that converts)."""

    name: typing.ClassVar[str] = ""
    aliases: typing.ClassVar[dict] = {}

    def to_dict(self) -> dict:
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _each(items, tp: Any, path: tuple, where: _Where) -> dict:
    """Every item of a list or mapping coerced to ``tp``; the errors of all of them raised together."""
    out, errors = {}, []
    for key, value in items:
        try:
            out[key] = _coerce(value, tp, path + (key,), where)
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise gathered(errors)
    return out


def _shape_matches(value: Any, tp: Any) -> bool:
    if get_origin(tp) in (list, tuple):
        return isinstance(value, (list, tuple))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict) or (isinstance(value, str) and hasattr(tp, "dispatch"))
    return False


class FieldError(ValueError):
    """Raised by a config's ``__post_init__`` to blame one field: ``FieldError("r", "must be >= 1")``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """For ``__post_init__``: each named field (unless None) must be >= ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= minimum:
            raise FieldError(name, f"must be >= {minimum}, got {value}")


def positive(obj: Any, *names: str) -> None:
    """For ``__post_init__``: each named field (unless None) must be > 0."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise FieldError(name, f"must be > 0, got {value}")


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest valid name, or the list of valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    close = close or [v for v in valid if name.startswith(v) or v.startswith(name)][:1]  # rank -> r
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid keys: {', '.join(valid)})"


def _dispatch(base: type, value: Any, path: tuple, where: _Where) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{where(path)}: expected a mapping with a 'name' key, got {value!r}")
    try:
        cls = base.dispatch(value["name"])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{where(path + ('name',))}: {e.args[0]}") from None
    rest = {k: v for k, v in value.items() if k != "name"}
    return _build(cls, rest, path, where)


def _build(cls: type[T], data: Any, path: tuple, where: _Where) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where(path)}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    moved = getattr(cls, "moved_keys", {})  # keys an earlier version had, and where they went
    errors: list[ConfigError] = []  # every error of this mapping (and those inside it), reported together
    try:
        data, renamed = unaliased(cls, data)  # another library's names (peft's lora_alpha) -> peftlab's
    except FieldError as e:
        raise ConfigError(f"{where(path + (e.field,))}: {e}") from None
    versioned = getattr(cls, "versioned", None)  # a schema whose defaults depend on the version it declares
    if versioned is not None:
        data = versioned(data)
    for key in data:
        if key in moved and key not in fields:
            errors.append(ConfigError(f"{where(path + (key,))}: {moved[key]}"))
        elif key not in fields:
            errors.append(ConfigError(f"{where(path + (key,))}: unknown key {key!r}{suggest(str(key), fields)}"))
    kwargs = {}
    for k, v in data.items():
        if k in fields:
            try:
                kwargs[k] = _coerce(v, hints[k], path + (renamed.get(k, k),), where)
            except ConfigError as e:
                errors.append(e)
    missing = [
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    errors += [ConfigError(f"{where(path)}: missing required key {n!r}") for n in missing]
    if not missing:
        built, bad_values = _construct(cls, kwargs, path, where)
        if not errors and not bad_values:
            return built
        errors += bad_values
    raise gathered(errors)


def _construct(cls: type[T], kwargs: dict, path: tuple, where: _Where) -> tuple[Any, list[ConfigError]]:
    """``cls(**kwargs)`` and the errors of its ``__post_init__`` checks: after a check blames a field
    (``FieldError``), that field is put back to its default and the checks run again, so that every
    bad value is named at once. An error that blames no given field ends the search: it may follow
    from a default put back."""
    errors: list[ConfigError] = []
    given = dict(kwargs)
    for _ in range(len(kwargs) + 1):
        try:
            return cls(**given), errors
        except (ValueError, TypeError, ConfigError) as e:
            field = getattr(e, "field", None)
            if errors and field not in given:
                break
            errors.append(ConfigError(f"{where(path + (field,) if field else path)}: {e}"))
            if field not in given:
                break
            del given[field]
    return None, errors


def from_dict(cls: type[T], data: Any, *, source: str | None = None, lines=None) -> T:
    """Build dataclass ``cls`` from plain data, validating keys and types."""
    return _coerce(data, cls, (), _Where(source, lines))


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (what gets written as YAML/JSON)."""
    if hasattr(obj, "dispatch") and dataclasses.is_dataclass(obj):
        return to_dict(obj.to_dict())
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[tuple, Any]:
    """``train.lr=1e-4`` -> (("train", "lr"), 1e-4); list items by index: ``methods.0.r=8``."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return path, value


def set_path(data: Any, path: tuple, value: Any, text: str) -> Any:
    """Return a copy of plain ``data`` with ``path`` set to ``value`` (creating mappings as needed)."""
    head, *rest = path
    if isinstance(data, list):
        if not isinstance(head, int) or not -len(data) <= head < len(data):
            raise ConfigError(f"override {text!r}: {head!r} is not an index of a {len(data)}-item list")
        out = list(data)
    else:
        out = dict(data or {})
    if rest:
        out[head] = set_path(out[head] if (isinstance(out, list) or head in out) else {}, tuple(rest), value, text)
    else:
        out[head] = value
    return out


def load_config(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or nothing; ``extends:`` followed) and apply ``key=value`` overrides on top."""
    data, lines = read_config_yaml(path) if path is not None else ({}, {})
    for text in overrides:
        key, value = parse_override(text)
        data = set_path(data, key, value, text)
        lines = {p: ln for p, ln in lines.items() if p[: len(key)] != key}
        lines[key] = f"override {text!r}"
    return from_dict(cls, data, source=str(path) if path else "overrides", lines=lines)
