"""Property-based: every malformed config, from the file or from --set, is exit status 2 with one
line naming the bad key, and never a traceback."""

import json

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnexp.cli import main
from bnexp.config.schema import (BatchNormConfig, ConvBlock, DataConfig, DropoutConfig, EarlyStoppingConfig,
                          ExperimentConfig, InitializerConfig, ModelConfig, TrainConfig)

BASE = {
    "name": "fuzz",
    "seeds": [0],
    "data": {"dataset": "npz", "path": "absent.npz"},  # absent: a valid config is planned without parameter counts
    "model": {"conv": [{"filters": 4, "pool": 2}], "dense": [8], "kernel_initializer": {"name": "he_normal"},
              "batch_norm": {"momentum": 0.9}, "dropout": {"rate": 0.0}},
    "train": {"epochs": 1, "batch_size": 8, "early_stopping": {"patience": 2}},
}

# Where keys can go, and the fields each place allows.
SECTIONS = {
    (): ExperimentConfig, ("data",): DataConfig, ("model",): ModelConfig, ("train",): TrainConfig,
    ("model", "batch_norm"): BatchNormConfig, ("model", "dropout"): DropoutConfig,
    ("model", "kernel_initializer"): InitializerConfig, ("model", "conv", 0): ConvBlock,
    ("train", "early_stopping"): EarlyStoppingConfig,
}

# Keys by the type of value they take.
TYPED = {
    "int": ["train.batch_size", "train.epochs", "train.steps_per_epoch", "train.log_every_steps",
            "train.decay_steps", "train.early_stopping.patience", "data.train_subset", "data.split_seed",
            "model.conv.0.filters", "model.conv.0.kernel_size", "model.dense.0"],
    "float": ["train.learning_rate", "train.momentum", "train.decay_rate", "data.validation_split",
              "model.batch_norm.momentum", "model.batch_norm.epsilon", "model.dropout.rate",
              "model.kernel_initializer.stddev"],
    "bool": ["model.batch_norm.enabled", "model.batch_norm.center", "train.nesterov", "train.deterministic",
             "train.early_stopping.restore_best_weights"],
    "choice": ["data.dataset", "model.activation", "train.optimizer", "train.schedule", "data.scaling",
               "model.batch_norm.placement", "model.kernel_initializer.name", "train.early_stopping.monitor"],
    "list": ["seeds", "model.dense", "model.conv", "data.ignore_columns"],
    "mapping": ["data", "train", "model.batch_norm", "model.dropout", "train.early_stopping", "arms", "sweep"],
    "str": ["name", "description", "data.path", "model.preset"],
}

letters = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
not_a_word = letters.filter(lambda s: s not in {"true", "false", "yes", "no", "on", "off", "y", "n", "t", "f",
                                                "inf", "nan", "infinity"})
lists = st.lists(st.integers(-3, 3), min_size=1, max_size=3)
mappings = st.dictionaries(letters, st.integers(), min_size=1, max_size=2)
WRONG = {
    "int": st.one_of(not_a_word, lists, mappings, st.floats(0.1, 0.9), st.floats(1.1, 99.9)),
    "float": st.one_of(not_a_word, lists, mappings),
    "bool": st.one_of(not_a_word, lists, mappings, st.integers(2, 99), st.floats(0.1, 0.9)),
    "choice": st.one_of(letters.map(lambda s: s + "x"), st.integers(), lists, mappings),
    "list": st.one_of(not_a_word, st.integers(), mappings),
    "mapping": st.one_of(not_a_word, st.integers(), lists),
    "str": st.one_of(st.integers(), lists, mappings),
}

below_one = st.integers(-100, 0)
BAD_VALUES = [
    *((key, below_one) for key in ("train.batch_size", "train.epochs", "train.log_every_steps", "train.decay_steps",
                                   "model.dense.0", "model.conv.0.filters", "data.train_subset")),
    ("train.learning_rate", st.one_of(st.floats(-1e6, 0.0), st.just(float("nan")))),
    ("data.validation_split", st.one_of(st.floats(-5, 0.0), st.floats(1.0, 5))),
    ("train.momentum", st.one_of(st.floats(-5, -1e-6), st.floats(1.0, 5))),
    ("model.dropout.rate", st.floats(1.0, 5)),
    ("model.batch_norm.momentum", st.one_of(st.floats(-5, -1e-6), st.floats(1.001, 5))),
    ("model.batch_norm.epsilon", st.floats(-5, 0.0)),
    ("train.early_stopping.patience", st.integers(-100, -1)),
    ("seeds", st.one_of(st.just([]), st.integers(0, 9).map(lambda s: [s, s]))),
    ("name", st.from_regex(r"[-_./ ][a-z]{0,5}|[a-z]{1,5}[/ :][a-z]{0,5}", fullmatch=True)),
    ("reference", letters.map(lambda s: s + "_arm")),
    ("arms", st.one_of(st.just({}), st.from_regex(r"[a-z]{1,4}[ /.:][a-z]{1,4}", fullmatch=True)
                                      .map(lambda name: {name: {}}))),
    ("model.preset", letters.map(lambda s: s + "_net")),
]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


def base():
    return json.loads(json.dumps(BASE))


def place(raw: dict, path: tuple, value) -> None:
    node = raw
    for part in path[:-1]:
        node = node[part]
    if isinstance(node, list) and path[-1] >= len(node):
        node.append(value)
    else:
        node[path[-1]] = value


def dotted(path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in path.split("."))


def plan(config_file, raw_or_text, *overrides):
    text = raw_or_text if isinstance(raw_or_text, (str, bytes)) else yaml.safe_dump(raw_or_text)
    if isinstance(text, bytes):
        config_file.write_bytes(text)
    else:
        config_file.write_text(text)
    args = ["plan", str(config_file), "--results", str(config_file.parent / "results")]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


def assert_one_line_error(out, *names) -> None:
    assert out.exit_code == 2, out.output
    assert isinstance(out.exception, SystemExit), out.exception
    assert "Traceback" not in out.output
    assert out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output
    for name in names:
        assert name in out.output, (name, out.output)


def assert_one_line_error_or_planned(out) -> None:
    """A value that happens to be valid is planned (its parameter counts need the absent data)."""
    if out.exit_code == 0:
        assert "parameter counts need the data ('?' above)" in out.output and "Traceback" not in out.output
    else:
        assert_one_line_error(out)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(section=st.sampled_from(sorted(SECTIONS, key=str)), key=st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
       via_set=st.booleans())
def test_an_unknown_key_is_named(config_file, section, key, via_set):
    if key in SECTIONS[section].model_fields:
        key += "_x"
    path = ".".join(str(part) for part in (*section, key))
    if via_set:
        out = plan(config_file, base(), f"{path}=1")
    else:
        raw = base()
        place(raw, (*section, key), 1)
        out = plan(config_file, raw)
    assert_one_line_error(out, f"{path}: unknown key")


@fuzz
@given(data=st.data(), via_set=st.booleans())
def test_a_value_of_the_wrong_type_is_named(config_file, data, via_set):
    kind = data.draw(st.sampled_from(sorted(TYPED)))
    key = data.draw(st.sampled_from(TYPED[kind]))
    value = data.draw(WRONG[kind])
    check_bad_value(config_file, key, value, via_set)


@fuzz
@given(data=st.data(), via_set=st.booleans())
def test_a_value_out_of_range_is_named(config_file, data, via_set):
    key, values = data.draw(st.sampled_from(BAD_VALUES))
    check_bad_value(config_file, key, data.draw(values), via_set)


def check_bad_value(config_file, key, value, via_set):
    if via_set:
        item = f"{key}={json.dumps(value)}"
        out = plan(config_file, base(), item)
        assert_one_line_error(out, key, f"--set {item}")
    else:
        raw = base()
        place(raw, dotted(key), value)
        assert_one_line_error(plan(config_file, raw), key, str(config_file))


@fuzz
@given(section=st.sampled_from(["data", "model", "train"]), value=WRONG["mapping"], where=st.sampled_from(["arm", "sweep"]))
def test_an_arm_or_sweep_point_that_replaces_a_section_is_named(config_file, section, value, where):
    raw = base()
    if where == "arm":
        raw["arms"] = {"no_bn": {}, "bn": {section: value}}
        # An arm may not change the data at all (its pair must see the same data), whatever the value.
        names = ["arms.bn", "an arm may not change the data" if section == "data" else f"{section}: expected a mapping"]
    else:
        raw["sweep"] = {section: [value]}
        names = [section]
    assert_one_line_error(plan(config_file, raw), *names)


@fuzz
@given(key=st.sampled_from(["train.batch_size", "train.learning_rate", "model.activation", "data.validation_split"]),
       values=st.lists(st.one_of(letters.map(lambda s: s + "x"), st.integers(-5, 0)), min_size=1, max_size=3))
def test_a_bad_sweep_value_names_the_sweep_point(config_file, key, values):
    raw = base()
    raw["sweep"] = {key: values}
    assert_one_line_error(plan(config_file, raw), key, "sweep point")


def paths(node, prefix=()):
    """Every key path in a config, sections and leaves alike."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


anything = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=6)


@fuzz
@given(path=st.sampled_from([p for p in paths(BASE) if p != ("data", "dataset")]), value=anything)
def test_any_value_anywhere_is_one_line_or_nothing_to_fix(config_file, path, value):
    raw = base()
    place(raw, path, value)
    assert_one_line_error_or_planned(plan(config_file, raw))


@fuzz
@given(item=st.text(max_size=40))
def test_any_set_override_is_one_line(config_file, item):
    assert_one_line_error_or_planned(plan(config_file, base(), item))


@fuzz
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200),
                      st.sampled_from(["", "   \n", "# only a comment\n", "---\n", "~\n", "null\n"]),
                      st.recursive(st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.floats()),
                                   lambda inner: st.lists(inner, max_size=3), max_leaves=5)
                      .map(lambda value: yaml.safe_dump(value)),
                      st.text(alphabet="[]{}:,-?&*!|>'\"%@` \n\t#abc", max_size=60)))
def test_broken_or_odd_yaml_is_one_line(config_file, text):
    assert_one_line_error(plan(config_file, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ("[1, 2]\n", "expected a mapping at the top level, got list"),
        ("42\n", "expected a mapping at the top level, got int"),
        ("data: {dataset: npz\n", "invalid YAML at line 2, column 1"),
        ("data:\n\t- x\n", "invalid YAML"),
    ],
)
def test_empty_broken_and_non_mapping_files_say_what_is_wrong(config_file, text, message):
    assert_one_line_error(plan(config_file, text), f"{config_file}: ", message)


@fuzz
@given(key=st.sampled_from(TYPED["int"] + TYPED["float"]), value=st.booleans(), via_set=st.booleans())
def test_a_boolean_where_a_number_belongs_is_named(config_file, key, value, via_set):
    if via_set:
        out = plan(config_file, base(), f"{key}={str(value).lower()}")
    else:
        raw = base()
        place(raw, dotted(key), value)
        out = plan(config_file, raw)
    assert_one_line_error(out, key.rsplit(".", 1)[0], "true and false are not numbers")


VALID = {"train.learning_rate": st.sampled_from([0.1, "1e-1", 1.0e-1, "0.1"]),
         "train.batch_size": st.sampled_from([8, 8.0, "8"]),
         "model.activation": st.sampled_from(["relu", "tanh"]),
         "model.kernel_initializer": st.sampled_from(["he_normal", {"name": "he_normal"}])}


@fuzz
@given(key=st.sampled_from(sorted(VALID)), data=st.data())
def test_a_sweep_value_listed_twice_is_named(config_file, key, data):
    first = data.draw(VALID[key])
    values = data.draw(st.lists(VALID[key], max_size=2)) + [first]
    raw = base()
    raw["sweep"] = {key: [first, *values]}
    assert_one_line_error(plan(config_file, raw), f"sweep.{key}: values ", "list each value once")


@fuzz
@given(key=st.one_of(st.sampled_from(["seed", "seeds", "name", "data", "data.path", "data.train_subset",
                                      "data.split_seed"]), letters), value=st.integers(0, 5))
def test_an_arm_may_set_only_model_and_train_keys(config_file, key, value):
    raw = base()
    raw["arms"] = {"no_bn": {"model.batch_norm.enabled": False}, "bn": {"model.batch_norm.enabled": True, key: value}}
    assert_one_line_error(plan(config_file, raw), f"arms.bn.{key}: ")
