"""--tensorboard: each run's hyperparameters and final metrics reach TensorBoard's HParams dashboard."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from bnexp.hparams import run_hparams


def read_hparams(log_dir):
    """(session start info, session end info, {final metric: value}, its step) of the hparams event file."""
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    finals = {tag: events.Tensors(tag)[0] for tag in events.Tags()["tensors"] if tag.startswith("test_")}
    return start, end, {tag: float(e.tensor_proto.float_val[0]) for tag, e in finals.items()}, \
        {e.step for e in finals.values()}


def hparam_values(start) -> dict:
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values


@pytest.mark.slow
def test_each_run_carries_its_swept_keys_arm_seed_and_final_metrics(tmp_path, write_config, cli):
    config = write_config({"sweep": {"train.learning_rate": [0.01, 0.1]}, "seeds": [3]})
    out = cli("run", config, "--tensorboard", "-q")
    assert out.exit_code == 0, out.output

    runs = sorted((tmp_path / "results").glob("tiny/*/spec.json"))
    assert len(runs) == 4
    seen = set()
    for spec_file in runs:
        run_dir = spec_file.parent
        spec = json.loads(spec_file.read_text())
        result = json.loads((run_dir / "result.json").read_text())
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        start, end, finals, steps = read_hparams(run_dir / "tensorboard")

        assert hparam_values(start) == {"train.learning_rate": spec["point"]["train.learning_rate"],
                                        "arm": spec["arm"], "seed": 3.0}
        assert start.group_name == spec["run_id"]
        assert end.status == api_pb2.STATUS_SUCCESS
        assert finals == pytest.approx({name: result[name] for name in ("test_loss", "test_accuracy", "test_error")})
        assert steps == {history[-1]["step"]}
        seen.add((spec["point"]["train.learning_rate"], spec["arm"]))
        # Keras' curves sit in the subfolders the dashboard counts as this session's metrics.
        assert {p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()} == {"train", "validation"}
    assert seen == {(lr, arm) for lr in (0.01, 0.1) for arm in ("no_bn", "bn")}


def test_a_run_written_twice_keeps_one_hparams_record(tmp_path):
    from bnexp.hparams import write_hparams

    spec = {"run_id": "bn-s0-abc", "arm": "bn", "seed": 0, "point": {"model.dense": [8, 4]}}
    write_hparams(tmp_path, spec, {"status": "failed"}, step=0)
    write_hparams(tmp_path, spec, {"status": "completed", "test_loss": 0.5, "test_accuracy": 0.75,
                                   "test_error": 0.25}, step=12)

    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    start, end, finals, steps = read_hparams(tmp_path)
    assert hparam_values(start) == {"model.dense": "[8, 4]", "arm": "bn", "seed": 0.0}
    assert end.status == api_pb2.STATUS_SUCCESS
    assert finals == {"test_loss": 0.5, "test_accuracy": 0.75, "test_error": 0.25}
    assert steps == {12}


def test_hparams_hold_only_values_the_dashboard_takes():
    spec = {"arm": "bn", "seed": 1, "point": {"a": 0.1, "b": True, "c": "relu", "d": {"x": 1}}}
    assert run_hparams(spec) == {"a": 0.1, "b": True, "c": "relu", "d": '{"x": 1}', "arm": "bn", "seed": 1}
