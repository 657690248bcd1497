"""The meaning of an experiment, checked at plan time: every setting takes effect and every run
differs, or `bnexp` stops with one line (exit status 2) before anything is trained or written."""

import json

import pytest
from click.testing import CliRunner

from bnexp.cli import main
from bnexp.config.load import load_config
from bnexp.runner import write_experiment
from bnexp.sweep import expand_runs




def assert_error(out, message):
    assert out.exit_code == 2, out.output
    assert out.output == f"Error: {message}\n"


def test_a_sweep_over_the_key_the_arms_set_is_refused(cli, write_config):
    config = write_config({"sweep": {"model.batch_norm.enabled": [False, True]}})
    assert_error(cli("plan", config),
                 f"{config}: sweep.model.batch_norm.enabled: arm 'no_bn' sets model.batch_norm.enabled too, so this "
                 "sweep would not change its runs; sweep another key, or take model.batch_norm.enabled out of the "
                 "arms (arms: {run: {}} gives one arm whose runs the sweep tells apart)")


def test_the_same_sweep_with_one_arm_plans_two_runs(cli, write_config):
    config = write_config({"sweep": {"model.batch_norm.enabled": [False, True]}, "arms": {"run": {}}})
    out = cli("plan", config)
    assert out.exit_code == 0, out.output
    assert "tiny: 2 runs = 2 sweep point(s) x 1 arm(s) x 1 seed(s)" in out.output


def test_an_arm_that_replaces_a_swept_section_is_refused(cli, write_config):
    config = write_config({"sweep": {"model.dropout.rate": [0.0, 0.5]},
                           "arms": {"a": {"model.dropout": {"rate": 0.1}}, "b": {"model.dense": [4]}}})
    assert_error(cli("plan", config),
                 f"{config}: sweep.model.dropout.rate: arm 'a' sets model.dropout too, so this sweep would not "
                 "change its runs; sweep another key, or take model.dropout out of the arms")


def test_a_set_of_a_swept_key_points_to_sweep(cli, write_config):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}})
    assert_error(cli("plan", config, "--set", "train.learning_rate=0.5"),
                 "--set train.learning_rate=0.5: train.learning_rate is swept (sweep.train.learning_rate), so this "
                 "--set would be ignored; to change the swept values use --sweep 'train.learning_rate=[...]'")


def test_a_set_of_a_key_every_arm_sets_is_refused(cli, write_config):
    config = write_config()
    assert_error(cli("plan", config, "--set", "model.batch_norm.enabled=false"),
                 "--set model.batch_norm.enabled=false: every arm sets model.batch_norm.enabled (no_bn, bn), so this "
                 "--set would be ignored; change the arms instead, e.g. --set 'arms={...}'")


def test_a_set_of_a_key_only_some_arms_set_still_works(write_config):
    config = write_config({"arms": {"plain": {}, "bn_fast": {"model.batch_norm.enabled": True,
                                                              "train.learning_rate": 0.1}}})
    runs = expand_runs(load_config(config, ["train.learning_rate=0.02"]), str(config))
    assert {r.arm: r.config.train.learning_rate for r in runs} == {"plain": 0.02, "bn_fast": 0.1}


def test_sweep_option_replaces_one_axis_and_adds_another(cli, write_config):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}})
    experiment = load_config(config, sweeps=["train.learning_rate=[0.5]", "train.batch_size=[4, 16]"])
    assert experiment.sweep == {"train.learning_rate": (0.5,), "train.batch_size": (4, 16)}
    out = cli("plan", config, "--sweep", "train.learning_rate=[0.5, 0.05]")
    assert out.exit_code == 0, out.output
    assert "tiny: 4 runs = 2 sweep point(s) x 2 arm(s) x 1 seed(s)" in out.output
    assert " 0.50 " in out.output and " 0.05 " in out.output and " 0.01 " not in out.output


@pytest.mark.parametrize("item, message", [
    ("train.learning_rate=0.5", "--sweep train.learning_rate=0.5: expected KEY=[VALUES], a YAML list, "
                                "e.g. --sweep 'train.learning_rate=[0.5]'"),
    ("train.learning_rate", "--sweep train.learning_rate: expected KEY=VALUE, "
                            "e.g. --sweep 'train.learning_rate=[0.01, 0.1]'"),
    ("seed=[1, 2]", "--sweep seed=[1, 2]: sweep.seed: a swept key starts with data., model. or train."),
    ("train.epochs=[]", "--sweep train.epochs=[]: sweep.train.epochs: needs at least one value"),
    ("train.epochs=[1, true]", "{f}: sweep point train.epochs=True: train.epochs: expected an integer, got True; "
                               "true and false are not numbers"),
])
def test_a_bad_sweep_option_is_one_line(cli, write_config, item, message):
    config = write_config()
    assert_error(cli("plan", config, "--sweep", item), message.replace("{f}", str(config)))


def test_repeated_sweep_values_are_refused(cli, tmp_path, write_config):
    config = write_config()
    text = config.read_text() + "sweep:\n  train.learning_rate: [0.1, 0.01, 1.0e-1]\n"
    config.write_text(text)
    assert_error(cli("plan", config), f"{config}: sweep.train.learning_rate: values 1 (0.1) and 3 (0.1) are the same "
                                      "train.learning_rate; list each value once")


@pytest.mark.parametrize("key, values, message", [
    ("train.learning_rate", ["1e-3", 0.001], "values 1 ('1e-3') and 2 (0.001) are the same train.learning_rate"),
    ("train.batch_size", [8, 8.0], "values 1 (8) and 2 (8.0) are the same train.batch_size"),
    ("model.kernel_initializer", ["he_normal", {"name": "he_normal"}],
     "values 1 ('he_normal') and 2 ({name: he_normal}) are the same model.kernel_initializer"),
])
def test_values_equal_once_read_are_repeated_values(cli, write_config, key, values, message):
    config = write_config({"sweep": {key: values}})
    assert_error(cli("plan", config), f"{config}: sweep.{key}: {message}; list each value once")


def test_a_number_written_as_a_string_still_works(write_config):
    config = write_config({"sweep": {"train.learning_rate": ["1e-3", 0.01]}, "train.momentum": "5e-1"})
    runs = expand_runs(load_config(config), str(config))
    assert sorted({r.config.train.learning_rate for r in runs}) == [0.001, 0.01]
    assert {r.config.train.momentum for r in runs} == {0.5}


def test_two_arms_with_the_same_config_are_refused(cli, write_config):
    config = write_config({"arms": {"a": {"model.dense": [8]}, "b": {"train.epochs": 1}}})
    assert_error(cli("plan", config), f"{config}: arm a seed 0 and arm b seed 0 would train the same configuration; "
                                      "make every sweep value and every arm change the run")


@pytest.mark.parametrize("arm, message", [
    ({"seed": 3}, "arms.a.seed: an arm may not set the seed: the arms of a pair share each seed; "
                  "list the seeds in seeds:"),
    ({"data.train_subset": 12}, "arms.a.data.train_subset: an arm may not change the data: the arms of a pair must "
                                "see the same data; sweep it instead (sweep: {data.train_subset: [...]}) or write a "
                                "second config"),
    ({"modle.dense": [4]}, "arms.a.modle.dense: unknown key; an arm may set only model.* and train.* keys; "
                           "did you mean 'model'?"),
    ({"seeds": [1]}, "arms.a.seeds: unknown key; an arm may set only model.* and train.* keys"),
])
def test_keys_an_arm_may_not_vary(cli, write_config, arm, message):
    config = write_config({"arms": {"a": {"model.batch_norm.enabled": False, **arm},
                                    "b": {"model.batch_norm.enabled": True}}})
    assert_error(cli("plan", config), f"{config}: {message}")


@pytest.mark.parametrize("changes, message", [
    ({"seeds": [4294967296]}, "seeds: seed 4294967296 is outside 0 to 4294967295 (2**32 - 1), "
                              "the seeds NumPy and Keras accept"),
    ({"seeds": [0, -1]}, "seeds: seed -1 is outside 0 to 4294967295 (2**32 - 1), the seeds NumPy and Keras accept"),
    ({"data.split_seed": -1}, "data.split_seed: expected a number >= 0, got -1"),
])
def test_seeds_the_backends_refuse_are_refused(cli, write_config, changes, message):
    config = write_config(changes)
    assert_error(cli("plan", config), f"{config}: {message}")


def test_the_largest_seed_plans(write_config):
    config = write_config({"seeds": [4294967295]})
    assert [r.seed for r in expand_runs(load_config(config), str(config))] == [4294967295, 4294967295]


@pytest.mark.parametrize("changes, message", [
    ({"train.batch_size": True}, "train.batch_size: expected an integer, got True"),
    ({"train.learning_rate": True}, "train.learning_rate: expected a number, got True"),
    ({"train.steps_per_epoch": False}, "train.steps_per_epoch: expected an integer, got False"),
    ({"model.dense": [True]}, "model.dense: expected a list of integers, got [true]"),
    ({"seeds": [True]}, "seeds: expected a list of integers, got [true]"),
    ({"model.batch_norm": {"momentum": True}}, "model.batch_norm.momentum: expected a number, got True"),
])
def test_booleans_where_numbers_belong_are_refused(cli, write_config, changes, message):
    config = write_config(changes)
    assert_error(cli("plan", config), f"{config}: {message}; true and false are not numbers")


@pytest.mark.parametrize("args, message", [
    (["--executor", "sequential", "-j", "2"], "--executor sequential -j 2: sequential trains one run at a time in "
                                              "this process; drop -j, or use --executor processes -j 2"),
    (["--executor", "processes", "--address", "auto"], "--executor processes --address auto: only Ray connects to an "
                                                       "address; drop --executor (--address alone means Ray) or drop "
                                                       "--address"),
    (["--address", "auto", "-j", "2"], "-j 2: Ray runs as many runs at once as the cluster offers CPUs and GPUs for; "
                                       "drop -j and set --cpus-per-run / --gpus-per-run"),
    (["--gpus-per-run", "1"], "--gpus-per-run 1: only Ray tasks ask for CPUs and GPUs, not --executor processes; "
                              "add --executor ray (or --address ADDR), or drop --gpus-per-run"),
    (["--executor", "sequential", "--cpus-per-run", "2"], "--cpus-per-run 2: only Ray tasks ask for CPUs and GPUs, "
                                                          "not --executor sequential; add --executor ray (or "
                                                          "--address ADDR), or drop --cpus-per-run"),
])
def test_run_options_that_contradict_each_other(cli, write_config, tmp_path, args, message):
    assert_error(cli("run", write_config(), *args), message)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, message", [
    (["--target-value", "90"], "--target-value 90: the default --target-metric val_accuracy (or accuracy) is a "
                               "fraction, so expected a value > 0 and <= 1 (0 is met by every run at once), "
                               "e.g. 0.9 for 90%"),
    (["--target-metric", "accuracy", "--target-value", "0"],
     "--target-value 0: --target-metric accuracy is a fraction, so expected a value > 0 and <= 1 (0 is met by every "
     "run at once), e.g. 0.9 for 90%"),
    (["--target-metric", "val_loss", "--target-value", "-0.5"],
     "--target-value -0.5: --target-metric val_loss is a loss, never below 0; expected a value >= 0"),
    (["--target-value", "inf"], "--target-value inf: expected a finite number"),
])
def test_report_target_outside_the_metric_range(cli, args, message):
    assert_error(cli("report", *args), message)


def test_duplicate_yaml_keys_name_both_lines(cli, write_config):
    config = write_config()
    config.write_text(config.read_text() + "train:\n  epochs: 2\n")
    lines = config.read_text().splitlines()
    first = next(n for n, line in enumerate(lines, 1) if line.startswith("train:"))
    assert_error(cli("plan", config), f"{config}: train: key given twice, at lines {first} and {len(lines) - 1}; "
                                      "YAML would keep only the last, so keep one")


def test_duplicate_keys_inside_a_section_and_a_set(cli, tmp_path, tiny_npz):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: npz, path: {tiny_npz}}}\ntrain:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n")
    assert_error(cli("plan", config), f"{config}: epochs: key given twice, at lines 3 and 5; YAML would keep only "
                                      "the last, so keep one")
    config.write_text(f"data: {{dataset: npz, path: {tiny_npz}}}\n")
    assert_error(cli("plan", config, "--set", "train={epochs: 1, epochs: 2}"),
                 "--set train={epochs: 1, epochs: 2}: epochs: key given twice, at lines 1 and 1; YAML would keep "
                 "only the last, so keep one")


def test_a_key_may_override_a_yaml_merge(tmp_path, tiny_npz):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: npz, path: {tiny_npz}}}\nmodel: {{dense: [8]}}\n"
                      "train:\n  <<: {epochs: 3, batch_size: 8}\n"
                      "  epochs: 1\n")
    assert load_config(config).train == {"epochs": 1, "batch_size": 8}


def test_a_second_config_may_not_reuse_an_experiment_folder(cli, write_config, tmp_path):
    first = write_config(name="tiny")
    experiment = load_config(first)
    write_experiment(experiment, expand_runs(experiment, str(first)), tmp_path / "results", first)
    other = tmp_path / "other.yaml"
    other.write_text(first.read_text().replace("epochs: 1", "epochs: 2"))
    message = (f"{other}: {tmp_path / 'results' / 'tiny'} holds experiment 'tiny' of {first}, with other runs; "
               f"give {other} another name: (or use another --results folder)")
    assert_error(cli("plan", other), message)
    before = (tmp_path / "results" / "tiny" / "experiment.json").read_text()
    assert_error(cli("run", other), message)
    assert (tmp_path / "results" / "tiny" / "experiment.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "results" / "tiny").iterdir()) == ["experiment.json"]
    # The same runs from a copy of the file, or the same file edited, are fine.
    other.write_text(first.read_text())
    assert cli("plan", other).exit_code == 0
    first.write_text(first.read_text().replace("epochs: 1", "epochs: 2"))
    assert cli("plan", first).exit_code == 0


def test_an_edited_config_resumes_and_records_its_file(cli, write_config, tmp_path):
    config = write_config()
    out = cli("run", config, "--quiet")
    assert out.exit_code == 0, out.output
    out = cli("run", config, "--quiet", "--set", "seeds=[0, 1]")
    assert out.exit_code == 0, out.output
    assert "4 runs: 2 completed; 2 already complete (skipped); 0 left" in out.output
    record = json.loads((tmp_path / "results" / "tiny" / "experiment.json").read_text())
    assert record["config_file"] == str(config.resolve())


def test_a_data_error_leaves_no_experiment_folder(cli, write_config, tmp_path):
    config = write_config({"data.path": str(tmp_path / "missing.npz")})
    out = cli("run", config)
    assert out.exit_code == 2 and out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output
    assert not (tmp_path / "results").exists()
    (tmp_path / "results" / "other").mkdir(parents=True)
    assert cli("run", config).exit_code == 2
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["other"]


def test_top_level_help_shows_whole_command_summaries():
    out = CliRunner().invoke(main, ["--help"], terminal_width=80)
    text = " ".join(out.output.split())
    assert "report Write tables, plots and a report page for experiments under the results folder." in text
    assert "status List the runs of TARGET (default: every experiment under --results) and where each one stands." in text
    assert "..." not in out.output.partition("Commands:")[2]


def test_an_arm_inside_a_swept_section_keeps_the_sweep_point(write_config):
    config = write_config({"sweep": {"model.batch_norm": [{"momentum": 0.5}, {"momentum": 0.9}]}})
    runs = expand_runs(load_config(config), str(config))
    assert [(r.arm, r.point, r.config.model.batch_norm.enabled) for r in runs] == [
        ("no_bn", {"model.batch_norm": {"momentum": 0.5}}, False), ("bn", {"model.batch_norm": {"momentum": 0.5}}, True),
        ("no_bn", {"model.batch_norm": {"momentum": 0.9}}, False), ("bn", {"model.batch_norm": {"momentum": 0.9}}, True),
    ]
