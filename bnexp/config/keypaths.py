"""Dotted key paths (`model.conv.0.filters`) in raw config mappings, the YAML those are read from,
and the `--set KEY=VALUE` / `--sweep KEY=[VALUES]` items that name them: what bnexp.config.schema works on
before validation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from bnexp.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    would keep the last value and drop the first without a word."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (<<) may be overridden on purpose; odd keys are the constructor's to report
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKey(f"{key}: key given twice, at lines {first_line[key]} and {line}; "
                                    "YAML would keep only the last, so keep one")
            first_line[key] = line
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`; ConfigError naming `source` when it is not valid YAML or repeats a key."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None


def parse_override(item: str, option: str = "--set", example: str = "train.epochs=1") -> tuple[str, Any]:
    """Split `key=value` from --set or --sweep; the value is read as YAML (numbers, lists, true/false)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} {item}: expected KEY=VALUE, e.g. {option} {example}")
    try:
        return key.strip(), yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{option} {item}: {exc}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{option} {item}: the value is not valid YAML") from None


def covers(outer: str, inner: str) -> bool:
    """True when setting dotted key `outer` replaces `inner`: the same key or one inside it."""
    return inner == outer or inner.startswith(outer + ".")


def get_dotted(raw: Any, key: str) -> Any:
    """The value at dotted `key` in nested dicts and lists (the inverse of set_dotted)."""
    for part in key.split("."):
        raw = raw[int(part)] if isinstance(raw, list) else raw[part]
    return raw


def set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    """Set `a.b.c` inside nested dicts; list items by index, as in `model.conv.0.filters`."""
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            where = ".".join(parts[:depth]) or "top level"
            raise ConfigError(f"{source}: {key}: cannot set {part!r} inside {where}, which is {type(node).__name__}")
        if last:
            node[index] = copy.deepcopy(value)  # a later dotted key must not change the sweep value or arm it came from
        else:
            node = node[index]


def deep_merge(base: dict, top: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def related(a: str, b: str) -> bool:
    """True when one dotted path is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


# The key the report's learning-rate analyses (largest rate that trains, a log axis) look for.
LEARNING_RATE_KEY = "train.learning_rate"


def short_key(key: str) -> str:
    """`train.learning_rate` -> `learning_rate`: the last part of a dotted sweep key."""
    return key.rsplit(".", 1)[-1]


def point_label(point: Mapping[str, Any], separator: str = ", ", short: bool = False,
                value: Callable[[Any], str] = str) -> str:
    """A sweep point {key: value} as `key=value` items: `train.learning_rate=0.01, train.batch_size=8`, or with
    `short` keys `learning_rate=0.01` (short_key); `value` writes each value."""
    return separator.join(f"{short_key(key) if short else key}={value(item)}" for key, item in point.items())


class FrozenDict(dict):
    """A dict that refuses every change once made: the mappings of a loaded experiment. Unlike
    types.MappingProxyType it copies, pickles and serialises as a dict does."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a loaded config is read-only; change the YAML file or use --set")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)


def freeze(value: Any) -> Any:
    """`value` with every mapping a FrozenDict and every list a tuple, all the way down: what a loaded
    experiment holds, so that no part of it can change after validation."""
    if isinstance(value, Mapping):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """A frozen value (freeze) as the plain dicts and lists YAML gives: what set_dotted and validation work on."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value
