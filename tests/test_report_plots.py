"""A report that cannot mislead: one-epoch curves are visible, titles name the real arms, legends
and titles sit inside the figure and off the data, log axes read as plain numbers, sweep columns
carry the full key, and the summary's spread over sweep points cannot pass for an interval."""

import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bnexp.report import plots

from bnexp import report

from bnexp.report import tables
from test_report import ACT, LR, ExperimentWriter, completed, epochs

DROPOUT_ARMS = ["baseline", "dropout_before_pool", "dropout_after_pool", "bn", "bn_dropout"]


def drawn(figure):
    """The figure laid out as savefig lays it out, so text and legend extents are final."""
    FigureCanvasAgg(figure).draw()
    return figure


def inside(inner, outer) -> bool:
    return (inner.x0 >= outer.x0 - 0.5 and inner.y0 >= outer.y0 - 0.5 and inner.x1 <= outer.x1 + 0.5
            and inner.y1 <= outer.y1 + 0.5)


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.fixture
def one_epoch_dropout(tmp_path):
    """Five dropout arms x 2 seeds, one epoch each, no sweep; bn_dropout never reaches 60%."""
    writer = ExperimentWriter(tmp_path, "drop", arms=DROPOUT_ARMS, reference="baseline", dataset="fashion_mnist")
    for i, arm in enumerate(DROPOUT_ARMS):
        for seed in (0, 1):
            accuracy = 0.3 if arm == "bn_dropout" else 0.7 + i / 50 + seed / 100
            writer.run(arm, seed, history=epochs([accuracy]), result=completed(1 - accuracy, epochs_run=1))
    return report.load_experiment(writer.plan())


def test_one_epoch_curves_show_a_marker_per_arm_and_split_on_integer_epochs(one_epoch_dropout):
    exp = one_epoch_dropout
    figure = drawn(plots.plot_curves(exp.history, exp.arms, plots.arm_colours(exp.arms, "baseline"), "drop"))
    accuracy, loss = figure.axes
    curves = [line for ax in (accuracy, loss) for line in ax.lines if not line.get_label().startswith("_")]
    assert len(curves) == 20  # 5 arms x train/validation x accuracy/loss; the rest are seed-range error bars
    for line in curves:
        assert len(line.get_xdata()) == 1 and line.get_marker() == "o", line.get_label()
    low, high = accuracy.get_xlim()
    assert [tick.get_text() for tick in accuracy.get_xticklabels() if low <= tick.get_position()[0] <= high] == ["1"]
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()][:2] == ["baseline train", "baseline validation"]
    box = legend.get_window_extent()
    assert inside(box, figure.bbox)
    assert not any(overlaps(box, ax.get_window_extent()) for ax in figure.axes)


def test_log_loss_axis_ticks_are_plain_numbers(one_epoch_dropout):
    exp = one_epoch_dropout
    history = exp.history.assign(loss=[0.05, 0.5, 3.0] * 3 + [0.05], val_loss=0.2)
    figure = drawn(plots.plot_curves(history, exp.arms, plots.arm_colours(exp.arms, "baseline"), "drop"))
    loss = figure.axes[1]
    assert loss.get_yscale() == "log"
    labels = [tick.get_text() for tick in loss.get_yticklabels() if tick.get_text()]
    visible = [label for label, value in zip(labels, loss.get_yticks()) if 0.05 <= value <= 3]
    assert visible == ["0.05", "0.1", "0.2", "0.5", "1", "2"]


def test_the_heatmap_names_the_arms_compared_and_keeps_its_text_inside(tmp_path):
    writer = ExperimentWriter(tmp_path, "grid", sweep_keys=[LR, ACT], arms=["baseline", "dropout_before_pool"],
                              reference="baseline")
    for lr in (0.001, 0.1):
        for act in ("relu", "tanh"):
            for seed in (0, 1):
                writer.run("baseline", seed, {LR: lr, ACT: act}, epochs([0.8]), completed(0.1 + seed / 100))
                writer.run("dropout_before_pool", seed, {LR: lr, ACT: act}, epochs([0.8]), completed(0.08))
    exp = report.load_experiment(writer.plan())
    paired = tables.paired_table(exp.runs, exp.sweep_keys, exp.arms, "baseline")
    figure = drawn(plots.plot_advantage(paired, LR, ACT, "dropout_before_pool", "baseline"))
    title = figure.get_suptitle()
    assert title == "dropout_before_pool vs baseline: mean paired test-error difference"
    colour_bar = figure.axes[1]
    assert colour_bar.get_ylabel() == "dropout_before_pool − baseline (pp)\n< 0: dropout_before_pool better"
    for text in (figure._suptitle, colour_bar.yaxis.label, figure.axes[0].xaxis.label):
        assert inside(text.get_window_extent(), figure.bbox), text.get_text()


def test_steps_legend_lists_every_arm_beside_the_bars(one_epoch_dropout):
    exp = one_epoch_dropout
    target = tables.resolve_target(exp.runs, exp.history, [], "baseline", "val_accuracy", 0.6)
    per_run = tables.steps_per_run(exp.runs, exp.history, exp.step_losses, target)
    table = tables.steps_table(exp.runs, per_run, [], exp.arms, "baseline")
    figure, _ = plots.plot_steps(table, [], exp.arms, plots.arm_colours(exp.arms, "baseline"), target.describe())
    drawn(figure)
    (ax,) = figure.axes
    legend = ax.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == DROPOUT_ARMS  # bn_dropout: never reached, listed
    assert not overlaps(legend.get_window_extent(), ax.get_window_extent())
    assert inside(legend.get_window_extent(), figure.bbox)
    not_reached = [text for text in ax.texts if text.get_text() == "not reached"]
    assert len(not_reached) == 1 and inside(not_reached[0].get_window_extent(), ax.get_window_extent())


def lr_dropout_sweep(tmp_path):
    writer = ExperimentWriter(tmp_path, "lrdrop", sweep_keys=[LR], arms=["baseline", "dropout_after_pool"],
                              reference="baseline")
    for lr, gap in ((0.001, 0.02), (0.01, 0.05), (0.1, -0.01)):
        for seed in (0, 1):
            writer.run("baseline", seed, {LR: lr}, epochs([0.8]), completed(0.10 + seed / 100))
            writer.run("dropout_after_pool", seed, {LR: lr}, epochs([0.8]), completed(0.10 - gap + seed / 100))
    return writer.plan()


def test_sweep_columns_carry_the_full_key(tmp_path):
    (out,) = report.write_reports(tmp_path, str(lr_dropout_sweep(tmp_path)))
    page, markdown = (out / "index.html").read_text(), (out / "report.md").read_text()
    for section in ("test-error", "paired", "steps", "stability", "runs"):
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        headers = re.findall(r"<th>([^<]*)</th>", body)
        assert "train.learning_rate" in headers and "learning_rate" not in headers, (section, headers)
    assert markdown.count("| train.learning_rate | ") >= 4


def test_the_summary_names_the_sweep_points_of_its_extremes_not_a_range(tmp_path):
    (out,) = report.write_reports(tmp_path, str(lr_dropout_sweep(tmp_path)))
    markdown = (out / "report.md").read_text()
    assert ("- dropout_after_pool − baseline mean test-error difference per sweep point: lowest -5.00 pp "
            "(at learning_rate=0.01), highest +1.00 pp (at learning_rate=0.1); dropout_after_pool is lower at 2 "
            "of 3 sweep point(s); 3 point(s) with the same difference in every seed: no interval or test.") in markdown
    assert " from -5.00 to +1.00 pp" not in markdown
