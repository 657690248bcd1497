"""Validation errors as one line: the key path, what was given, what is allowed, and a "did you mean"."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bnexp.errors import ConfigError
from bnexp.config.keypaths import related


def validate(model_cls: type[BaseModel], raw: dict, source: str, key_sources: dict[str, str] = {},
             context: dict | None = None):
    """Validate `raw`; an error names the --set, sweep point or arm that set the bad key, else `source`."""
    try:
        return model_cls.model_validate(raw, context=context)
    except ValidationError as exc:
        keypath, message = describe_error(model_cls, exc)
        # Else a key the message names: a check across sections (model.batch_norm.virtual_batch_size and
        # train.batch_size) may be broken by a sweep or an arm that set the other key.
        origin = next(
            (label for key, label in key_sources.items() if related(keypath, key)),
            next((label for key, label in key_sources.items() if key in message), source),
        )
        raise ConfigError(f"{origin}: {keypath}: {message}") from None


def closest(word: str, choices, ignore_case: bool = False) -> str | None:
    """The choice nearest to `word` (difflib's similarity of at least 0.6), or None: what every
    "did you mean" in bnexp offers."""
    choices = list(choices)
    keys = [choice.lower() for choice in choices] if ignore_case else choices
    match = difflib.get_close_matches(word.lower() if ignore_case else word, keys, n=1, cutoff=0.6)
    return choices[keys.index(match[0])] if match else None


def did_you_mean(word: str, choices) -> str:
    close = closest(word, choices)
    return f"; did you mean {close!r}?" if close else ""


def describe_error(model_cls: type[BaseModel], exc: ValidationError) -> tuple[str, str]:
    """(key path, message) for the most useful error pydantic found."""
    errors = exc.errors()
    # A `X | None` field reports a second error against None; that one never helps.
    error = next((e for e in errors if e["type"] != "none_required"), errors[0])
    loc = [str(part) for part in error["loc"]]
    kind, ctx, received = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        allowed = allowed_keys(model_cls, error["loc"][:-1])
        hint = did_you_mean(loc[-1], allowed) or f"; allowed: {', '.join(allowed)}"
        return ".".join(loc), f"unknown key{hint}"
    if kind == "missing":
        return ".".join(loc), "required key is missing"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        field, sep, rest = message.partition(": ")
        if sep and " " not in field:
            loc, message = loc + [field], rest
        return ".".join(loc) or "top level", message
    expected = {
        "finite_number": lambda: "a finite number",
        "greater_than": lambda: f"a number > {ctx['gt']:g}",
        "greater_than_equal": lambda: f"a number >= {ctx['ge']:g}",
        "less_than": lambda: f"a number < {ctx['lt']:g}",
        "less_than_equal": lambda: f"a number <= {ctx['le']:g}",
        "literal_error": lambda: f"one of {ctx['expected'].replace(chr(39), '')}",
        "int_type": lambda: "an integer",
        "int_parsing": lambda: "an integer",
        "int_from_float": lambda: "an integer",
        "float_type": lambda: "a number",
        "float_parsing": lambda: "a number",
        "bool_type": lambda: "true or false",
        "bool_parsing": lambda: "true or false",
        "string_type": lambda: "a string",
        "string_pattern_mismatch": lambda: "letters, digits, '_', '-' and '.'",
        "list_type": lambda: "a list",
        "tuple_type": lambda: "a list",  # the config's lists are tuples (Strict), YAML's are lists
        "too_short": lambda: f"a list of at least {ctx.get('min_length', 1)} item(s)",
        "dict_type": lambda: "a mapping",
        "model_type": lambda: "a mapping",
        "model_attributes_type": lambda: "a mapping",
    }.get(kind)
    what = expected() if expected else error["msg"][0].lower() + error["msg"][1:]
    return ".".join(loc) or "top level", f"expected {what}, got {format_value(received)}"


def format_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return repr(value)


def allowed_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found by walking `loc` from `model_cls`."""
    node: Any = model_cls
    for part in loc:
        if isinstance(part, int) or not (isinstance(node, type) and issubclass(node, BaseModel)):
            continue
        annotation = node.model_fields[part].annotation
        node = _model_in(annotation)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
