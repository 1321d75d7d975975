"""Typed dataclass configs from YAML files plus ``key=value`` overrides.

A dataclass *is* the config (litgpt style): :func:`load_config` fills one from a YAML file and
command-line overrides (``a.b=3``, values parsed as YAML), rejects unknown keys with their dotted
name (valid keys listed, closest first), and ``__post_init__`` of each dataclass validates.
:func:`save_config` writes the resolved config next to a run's outputs; :func:`describe_fields`
lists every (nested) field with its type, default and the meaning its class's docstring gives
(``Attributes:`` section) — what ``--print-config`` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the config class; the message names the key."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or (
            isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed)
        ):
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(args[0], value, key)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, list):
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from exc
    if tp is Path and isinstance(value, str):
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        ranked = difflib.get_close_matches(unknown[0], sorted(names), n=len(names), cutoff=0.0)
        ranked += sorted(names - set(ranked))
        hint = f"; did you mean {prefix}{ranked[0]}?" if difflib.get_close_matches(unknown[0], names) else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}{hint} "
            f"Valid keys{f' under {prefix.rstrip(chr(46))}' if prefix else ''} (closest first): "
            f"{', '.join(ranked)}. (--print-config lists every field with its meaning.)"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` → ``{"a": {"b": 3}, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides.

    A class with a ``PRESETS`` mapping (name → values) takes the named ``preset``'s values for
    every key the file and the overrides leave unset.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    presets = getattr(cls, "PRESETS", None)  # a config class's named defaults, under the user's values
    if presets and data.get("preset") is not None:
        if data["preset"] not in presets:
            raise ConfigError(f"preset: unknown {data['preset']!r}; choose from {sorted(presets)}")
        data = _merge(presets[data["preset"]], data)
    return from_dict(cls, data)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON-safe data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path


def field_docs(cls: type) -> dict[str, str]:
    """Field meanings from the ``Attributes:`` sections of ``cls``'s docstring and its bases'.

    An entry ``a / b: text`` documents fields ``a`` and ``b``; continuation lines are joined.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        lines = doc.splitlines()
        if "Attributes:" not in lines:
            continue
        names: list[str] = []
        for line in lines[lines.index("Attributes:") + 1 :]:
            if line and not line.startswith(" "):
                break  # the next section
            entry = re.match(r"^ {4}([\w /]+):\s*(.*)$", line)
            if entry:
                names = [n.strip() for n in entry.group(1).split("/")]
                for n in names:
                    docs[n] = entry.group(2).strip()
            elif line.strip() and names:
                for n in names:
                    docs[n] = f"{docs[n]} {line.strip()}".strip()
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return re.sub(r"\b(typing|pathlib|mmalign(\.\w+)*)\.", "", str(tp)).replace("NoneType", "None")


def _first_sentence(text: str) -> str:
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value or '""'
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6).strip()


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every field of config class ``cls``, nested ones as dotted names, ``list[X]`` items as ``name[].f``.

    Returns:
        ``(name, type, default, meaning)`` rows; ``meaning`` is the first sentence of the field's
        docstring entry (empty when undocumented).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        name = prefix + f.name
        meaning = _first_sentence(docs.get(f.name, ""))
        if _is_dataclass_type(tp):
            rows.append((name, tp.__name__, "", meaning or (inspect.getdoc(tp) or "").splitlines()[0]))
            rows += describe_fields(tp, f"{name}.")
            continue
        rows.append((name, _type_name(tp), _show(default), meaning))
        item = (typing.get_args(tp) or (None,))[0] if typing.get_origin(tp) is list else None
        if _is_dataclass_type(item):
            rows += describe_fields(item, f"{name}[].")
    return rows


def format_fields(cls: type) -> str:
    """:func:`describe_fields` as aligned text: ``name  type  = default  meaning``."""
    rows = describe_fields(cls)
    w_name = max(len(r[0]) for r in rows)
    w_type = min(max(len(r[1]) for r in rows), 40)
    lines = [f"{cls.__name__} fields (set in the YAML file or as key=value):"]
    for name, tp, default, meaning in rows:
        value = f"= {default}" if default != "" else ""
        lines.append(f"  {name:<{w_name}}  {tp:<{w_type}}  {value:<16}  {meaning}".rstrip())
    return "\n".join(lines)
