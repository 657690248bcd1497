"""The `bnexp` command: a thin Click layer over the library.

User errors (bnexp.errors.BnexpError) become one line and exit status 2. Heavy imports
(TensorFlow, pandas, matplotlib) happen inside the commands, so `bnexp --help` is instant.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from bnexp import __version__
from bnexp.errors import BnexpError
from bnexp.metrics import ACCURACY, DEFAULT_TARGET_METRIC, TARGET_METRICS, is_accuracy

# TensorFlow's C++ start-up chatter hides bnexp's own output; users can still set it lower.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class UserError(click.ClickException):
    exit_code = 2


class Command(click.Command):
    def get_short_help_str(self, limit: int = 45) -> str:
        # The whole first sentence in `bnexp --help`: click would cut it to one line; the formatter wraps it.
        return super().get_short_help_str(limit=10**6)


class Group(click.Group):
    command_class = Command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BnexpError as exc:
            # One line even when the message quotes a user's key or value that holds a newline.
            raise UserError(str(exc).replace("\r", "\\r").replace("\n", "\\n")) from None


results_option = click.option(
    # resolve_path: absolute before any user code runs, so a builder that changes the working folder
    # cannot move where runs are written or data is read.
    "--results", "results_dir", type=click.Path(file_okay=False, path_type=Path, resolve_path=True), default="results",
    envvar="BNEXP_RESULTS_DIR", show_default=True, show_envvar=True, help="Where runs are stored.",
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key by its dotted path (repeatable), e.g. --set train.epochs=1.",
)
sweep_option = click.option(
    "--sweep", "sweeps", multiple=True, metavar="KEY=[VALUES]",
    help="Replace or add one sweep axis (repeatable); the values are read as a YAML list, "
         "e.g. --sweep 'train.learning_rate=[0.01, 0.1]'.",
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path, resolve_path=True), envvar="BNEXP_DATA_DIR",
    show_envvar=True,
    help="Folder holding the dataset files (mnist.npz, Fashion-MNIST IDX files, cifar-10-batches-py, CSVs). "
         "Without it, Keras downloads the data.",
)
config_argument = click.argument("config", type=click.Path(path_type=Path))



def experiment_options(command):
    """CONFIG and the options `plan` and `run` share, so both read an experiment the same way."""
    for option in (data_dir_option, results_option, sweep_option, set_option, config_argument):
        command = option(command)
    return command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bnexp")
def main():
    """Paired with/without-BatchNormalization experiments from one YAML file.

    \b
    Example:
      bnexp plan configs/lr_sweep.yaml
      bnexp run configs/lr_sweep.yaml --data-dir ../shared/data
      bnexp report
    """


@main.command()
@experiment_options
def plan(config, overrides, sweeps, results_dir, data_dir):
    """Validate CONFIG and list its runs without training anything.

    Prints one row per run (sweep values, arm, seed, run id, parameter counts, status) and totals.

    \b
    Example:
      bnexp plan configs/lr_sweep.yaml --set train.epochs=1
    """
    from bnexp.plan import plan_experiment

    click.echo(plan_experiment(config, overrides, sweeps, results_dir=results_dir, data_dir=data_dir))


@main.command()
@experiment_options
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary (for CI logs).")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs to <run dir>/tensorboard.")
@click.option("--deterministic", is_flag=True,
              help="Bit-identical reruns on CPU (same as --set train.deterministic=true; gives new run ids).")
@click.option("--workers", "-j", type=click.IntRange(min=1), metavar="N",
              help="Worker processes training runs side by side, the CPU threads split between them "
                   "[default: one per CPU, at most one per run; 1 trains in this process].")
@click.option("--executor", type=click.Choice(["processes", "sequential", "ray"]),
              help="Where runs train: worker processes on this machine, one after another in this process, "
                   "or Ray tasks on a cluster (pip install 'bnexp[ray]') [default: processes; ray with --address].")
@click.option("--address", metavar="ADDR", help="Ray cluster to run on, e.g. ray://head:10001 or auto "
              "[default: $RAY_ADDRESS, else a local Ray instance].")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True),
              help="Ray: CPUs each run asks for (its training threads) [default: 1].")
@click.option("--gpus-per-run", type=click.FloatRange(min=0),
              help="Ray: GPUs each run asks for; a fraction shares one GPU between runs, e.g. 0.25 [default: 0].")
def run(config, overrides, sweeps, results_dir, data_dir, quiet, tensorboard, deterministic, workers, executor,
        address, cpus_per_run, gpus_per_run):
    """Train every run of CONFIG that is not complete yet.

    Completed runs are skipped, so re-running the same command resumes a sweep. A diverging run
    is recorded as `diverged`; a failing one as `failed` (exit status 1 at the end).

    \b
    Example:
      bnexp run configs/lr_sweep.yaml --data-dir ../shared/data
      bnexp run configs/smoke.yaml --set train.epochs=1 --quiet
      bnexp run configs/lr_sweep.yaml --executor ray --address auto --gpus-per-run 0.25
    """
    from bnexp.runner import run_experiment

    summary = run_experiment(config, overrides, sweeps, results_dir=results_dir, data_dir=data_dir,
                             deterministic=deterministic, tensorboard=tensorboard, executor=executor, workers=workers,
                             address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, quiet=quiet)
    click.echo(summary.line())
    if summary.interrupted:
        sys.exit(130)
    if summary.failed:
        sys.exit(1)


@main.command()
@click.argument("target", required=False)
@results_option
@click.option(
    "--target-metric", type=click.Choice(TARGET_METRICS),
    help="Metric of the steps-to-target table: the first step at which a run reaches --target-value "
         "(accuracies: at least, losses: at most). Default: val_accuracy (accuracy without a validation "
         "split); `loss` also checks the per-step training-loss log.",
)
@click.option(
    "--target-value", type=float,
    help="Level of --target-metric to reach. Default: 90% of the reference arm's best mean final "
         "accuracy (1.1x its best mean final loss for a loss metric).",
)
def report(target, results_dir, target_metric, target_value):
    """Write tables, plots and a report page for experiments under the results folder.

    TARGET is an experiment name, an experiment folder or a results folder; without it every
    experiment under --results is reported. Each report lands in <experiment>/report/
    (index.html, report.md, tables/*.csv, plots/*.png); runs still running, failed or missing are
    listed there.

    \b
    Example:
      bnexp report lr_sweep
      bnexp report mnist_cnn --target-metric loss --target-value 0.1
    """
    from bnexp.report.write import write_reports

    _check_target(target_metric, target_value)
    for path in write_reports(results_dir, target, target_metric=target_metric, target_value=target_value):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("target", required=False)
@results_option
def status(target, results_dir):
    """List the runs of TARGET (default: every experiment under --results) and where each one stands.

    TARGET is an experiment name, an experiment folder or a results folder, as for `bnexp report`.
    A run is completed, diverged, failed (retried by the next `bnexp run`), running (another bnexp
    process holds its lock), incomplete (interrupted; the next `bnexp run` resumes it), pending, or
    damaged (one of its files cannot be read: the file and the reason are shown).

    \b
    Example:
      bnexp status lr_sweep --results results
    """
    from bnexp.status import experiments_status

    click.echo(experiments_status(results_dir, target))


@main.group(cls=Group)
def export():
    """Export experiments to an experiment tracker (MLflow).

    \b
    Example:
      bnexp export mlflow lr_sweep --tracking-uri http://localhost:5000
    """


@export.command()
@click.argument("target", required=False)
@results_option
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI", show_envvar=True, metavar="URI",
              help="The MLflow store: a tracking server (http://host:5000), a folder (mlruns), or a database "
                   "(sqlite:///mlflow.db; needs the full mlflow package).")
@click.option("--experiment-name", metavar="NAME",
              help="MLflow experiment to log into [default: the bnexp experiment's name].")
def mlflow(target, results_dir, tracking_uri, experiment_name):
    """Log every finished run of TARGET (default: every experiment under --results) to MLflow.

    Each run becomes an MLflow run (its configuration as params; arm, seed and sweep point as tags;
    its history and test metrics as metrics), under one parent run per experiment holding the
    report's tables. Exporting again skips unchanged runs and replaces retrained ones, matched on the
    tag bnexp.run_id. Runs not finished yet are counted and left for a later export. Needs
    pip install 'bnexp[mlflow]'.

    \b
    Example:
      bnexp export mlflow lr_sweep --tracking-uri mlruns
      bnexp export mlflow --tracking-uri http://localhost:5000 --experiment-name bn-lr
    """
    from bnexp.export import export_mlflow

    for summary in export_mlflow(results_dir, target, tracking_uri, experiment_name):
        for line in summary.lines():
            click.echo(line)


def _check_target(metric: str | None, value: float | None) -> None:
    """A --target-value the metric can reach and not every run meets at once."""
    if value is None:
        return
    shown = (f"--target-metric {metric}" if metric
             else f"the default --target-metric {DEFAULT_TARGET_METRIC} (or {ACCURACY})")
    if not math.isfinite(value):
        raise UserError(f"--target-value {value}: expected a finite number")
    if is_accuracy(metric or DEFAULT_TARGET_METRIC) and not 0 < value <= 1:
        raise UserError(f"--target-value {value:g}: {shown} is a fraction, so expected a value > 0 and <= 1 "
                        "(0 is met by every run at once), e.g. 0.9 for 90%")
    if value < 0:
        raise UserError(f"--target-value {value:g}: {shown} is a loss, never below 0; expected a value >= 0")

