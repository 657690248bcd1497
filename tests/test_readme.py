"""The README's config key table (section "A config file") lists every field of the config schema and no other."""

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from bnexp.config.presets import PRESETS
from bnexp.config.schema import DataConfig, ExperimentConfig, ModelConfig, TrainConfig

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = {"`data`": DataConfig, "`model`": ModelConfig, "`train`": TrainConfig, "top level": ExperimentConfig}


def key_table() -> dict[str, str]:
    """The `| section | keys |` table: the keys cell of each row, by section."""
    text = README.read_text().split("\n## A config file\n", 1)[1].split("\n## ", 1)[0]
    rows = re.search(r"^\| section \| keys \|\n\| --- \| --- \|\n((?:\|.*\n)+)", text, re.MULTILINE).group(1)
    return dict(re.fullmatch(r"\| (.+?) \| (.+) \|", row).groups() for row in rows.splitlines())


def named(cell: str) -> set[str]:
    """Every name in backticks, `{a, b}` and `a / b` split into their names."""
    return {name for quoted in re.findall(r"`([^`]+)`", cell) for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", quoted)}


def nested(annotation) -> list[type[BaseModel]]:
    """The config models a field holds: itself, or inside `X | None` and `tuple[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in nested(arg)]


def fields(model: type[BaseModel]) -> set[str]:
    """The YAML keys of `model`: its field names and those of the sections nested in it."""
    keys = set(model.model_fields)
    for field in model.model_fields.values():
        for inner in nested(field.annotation):
            keys |= fields(inner)
    return keys


def choices(model: type[BaseModel]) -> set[str]:
    """The values its Literal fields (nested ones too) allow: the table may name them as well as keys."""
    allowed = set()
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            args = typing.get_args(annotation)
            if typing.get_origin(annotation) is typing.Literal:
                allowed |= {str(arg) for arg in args}
            else:
                stack += args
            allowed |= {value for inner in nested(annotation) for value in choices(inner)}
    return allowed


def test_the_readme_key_table_lists_every_config_field_and_no_other():
    table = key_table()
    assert list(table) == list(SECTIONS)
    for section, model in SECTIONS.items():
        expected = fields(model) - ({"data", "model", "train"} if model is ExperimentConfig else set())
        listed = named(table[section])
        assert not expected - listed, f"{section}: the README leaves out {sorted(expected - listed)}"
        values = choices(model) | (set(PRESETS) if model is ModelConfig else set())
        assert not listed - expected - values, f"{section}: the README lists {sorted(listed - expected - values)}, " \
                                               "which the schema does not have"
