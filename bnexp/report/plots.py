"""Report figures, drawn with matplotlib's object API (no pyplot, so no global backend state).

Each function returns a `matplotlib.figure.Figure`; `Figure.savefig` renders PNGs with Agg.
Arms keep one colour across every figure of a report: the reference arm grey-blue, the others
from a fixed list in config order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from bnexp.report.values import is_number
from bnexp.config.keypaths import LEARNING_RATE_KEY, short_key
from bnexp.metrics import ACCURACY, LOSS, VAL_ACCURACY, VAL_LOSS, is_accuracy
from bnexp.report.cells import fmt, point_label, pp, value_label

REFERENCE_COLOUR = "#4c72b0"
ARM_COLOURS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X")
# Beyond a dozen panels a figure stops being readable; the caller notes what was left out.
MAX_PANELS = 12
MAX_BAR_GROUPS = 30
MAX_FOREST_ROWS = 60
# Curves with at most this many epochs get a marker per epoch: a one-epoch curve is a single point,
# which a line alone does not draw.
MARKED_EPOCHS = 25


def arm_colours(arms: list[str], reference: str) -> dict[str, str]:
    """A fixed colour per arm: the reference first colour, the others in config order."""
    others = iter(ARM_COLOURS * (len(arms) // len(ARM_COLOURS) + 1))
    return {arm: REFERENCE_COLOUR if arm == reference else next(others) for arm in arms}


def _log_axis(key: str, values: list) -> bool:
    """Learning rates, and positive values spanning a factor of 16 or more, read best on a log axis."""
    if not values or not all(is_number(v) and v > 0 for v in values):
        return False
    return key == LEARNING_RATE_KEY or max(values) / min(values) >= 16


def _legend_width(labels: list[str]) -> float:
    """Inches a small-font legend of `labels` takes beside the axes: about 0.075 inch a character."""
    return 0.8 + 0.075 * max((len(label) for label in labels), default=0)


def _side_legend(fig: Figure, ax, width: float) -> None:
    """The legend of `ax` in the right margin of `width` inches that _legend_width made room for."""
    x = 1 - (width - 0.15) / fig.get_size_inches()[0]
    fig.legend(*ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(x, 0.5), fontsize="small")


def _readable_log_ticks(axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten, written as plain numbers (0.5, not 5 x 10^-1)."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _fixed_margins(fig: Figure, left=0.8, right=0.25, bottom=0.6, top=0.7, wspace=0.25, hspace=0.5) -> None:
    """Margins in inches; much cheaper than constrained layout, which dominates report time."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace, hspace=hspace)


def plot_curves(history: pd.DataFrame, arms: list[str], colours: dict[str, str], title: str) -> Figure:
    """Accuracy and loss against epoch, train solid and validation dashed, per arm: the mean
    over seeds as a line (a marker per epoch when there are few), the range over seeds as a band.
    The legend sits beside the axes, off the data."""
    present = [arm for arm in arms if (history.arm == arm).any()]
    legend = _legend_width([f"{arm} validation" for arm in present])
    fig = Figure(figsize=(9 + legend, 3.6))
    _fixed_margins(fig, right=legend)
    ax_acc, ax_loss = fig.subplots(1, 2)
    positive_loss = True
    epochs = sorted(history.epoch.dropna().unique())
    marker = "o" if len(epochs) <= MARKED_EPOCHS else None
    for arm in present:
        runs = history[history.arm == arm]
        for metric, style, split in ((ACCURACY, "-", "train"), (VAL_ACCURACY, "--", "validation"),
                                     (LOSS, "-", "train"), (VAL_LOSS, "--", "validation")):
            if metric not in runs or runs[metric].isna().all():
                continue
            scale = 100 if is_accuracy(metric) else 1
            curve = runs.groupby("epoch")[metric].agg(["mean", "min", "max"]) * scale
            ax = ax_acc if is_accuracy(metric) else ax_loss
            ax.plot(curve.index, curve["mean"], style, color=colours[arm], label=f"{arm} {split}",
                    marker=marker, markersize=4, markerfacecolor="white" if split == "validation" else None)
            if len(curve) > 1:
                ax.fill_between(curve.index, curve["min"], curve["max"], color=colours[arm], alpha=0.15, lw=0)
            else:  # a band needs two epochs: the range over seeds as an error bar instead
                # clip: the mean of equal values can round past them, and matplotlib refuses a negative bar
                spread = [(curve["mean"] - curve["min"]).clip(lower=0), (curve["max"] - curve["mean"]).clip(lower=0)]
                ax.errorbar(curve.index, curve["mean"], yerr=spread, color=colours[arm], capsize=3, linestyle="none")
            if scale == 1:
                positive_loss &= bool((curve["min"].dropna() > 0).all())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss (cross-entropy)", title="loss")
    if positive_loss and ax_loss.lines:
        ax_loss.set_yscale("log")
        _readable_log_ticks(ax_loss.yaxis)
        ax_loss.set_ylabel("loss (cross-entropy, log scale)")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if ax_acc.lines:
        _side_legend(fig, ax_acc, legend)
    fig.suptitle(title)
    return fig


def _axis_positions(key: str, values: list) -> tuple[dict, bool]:
    """Where each swept value sits on the x axis, and whether the axis is logarithmic."""
    if all(is_number(v) for v in values):
        return {v: v for v in values}, _log_axis(key, values)
    return {v: i for i, v in enumerate(values)}, False


def plot_error_vs(table: pd.DataFrame, key: str, others: list[str], arms: list[str],
                  colours: dict[str, str], chance_error: float | None) -> tuple[Figure, int]:
    """Test error against one swept value, one line per arm with sd error bars; a panel per
    combination of the other swept values. Points where runs diverged get an X at the top.
    Returns the figure and how many panels were left out."""
    panels = [((), table)] if not others else list(table.groupby(others, sort=False))
    left_out = max(0, len(panels) - MAX_PANELS)
    panels = panels[:MAX_PANELS]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    legend = _legend_width(arms)
    fig = Figure(figsize=(4.6 * ncols + 0.6 + legend, 3.4 * nrows + 0.5))
    _fixed_margins(fig, right=legend, top=0.75 if others else 0.55, hspace=0.55 if others else 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    values = list(dict.fromkeys(table[key]))
    positions, log = _axis_positions(key, values)
    numeric = all(is_number(v) for v in values)
    for ax, (other_values, part) in zip(axes, panels):
        for i, arm in enumerate(arms):
            rows = part[part.arm == arm]
            if rows.empty:
                continue
            x = rows[key].map(positions).astype(float)
            # Categories have no order between them: markers only, no connecting line.
            ax.errorbar(x, rows.test_error_mean * 100, yerr=rows.test_error_sd.fillna(0) * 100,
                        color=colours[arm], marker=MARKERS[i % len(MARKERS)], capsize=3, label=arm,
                        linestyle="-" if numeric else "none")
            hit = rows[rows.diverged > 0]
            if not hit.empty:
                hx = hit[key].map(positions).astype(float)
                ax.plot(hx, [0.96] * len(hit), "X", color=colours[arm], markersize=9,
                        transform=ax.get_xaxis_transform())
                for xv, d, n in zip(hx, hit.diverged, hit.completed + hit.diverged):
                    ax.annotate(f"{d}/{n}", (xv, 0.96), xycoords=ax.get_xaxis_transform(),
                                xytext=(0, -12 - 9 * i), textcoords="offset points", ha="center",
                                fontsize="x-small", color=colours[arm])
        top = (part.test_error_mean + part.test_error_sd.fillna(0)).max() * 100
        top = 0 if np.isnan(top) else top
        # The chance line only where errors come near it; otherwise it would squash the data.
        show_chance = chance_error is not None and top >= 50 * chance_error
        if show_chance:
            ax.axhline(chance_error * 100, color="grey", ls=":", lw=1, label="chance")
        if log:
            ax.set_xscale("log")
        ax.set_xticks(list(positions.values()), [value_label(v) for v in positions])
        ax.minorticks_off()
        if not numeric:
            ax.set_xlim(-0.5, len(values) - 0.5)
        # Headroom above the highest error bar and the chance line for the divergence marks.
        highest = max(top, chance_error * 100 if show_chance else 0, 1)
        ax.set_ylim(0, highest * 1.25)
        ax.set(xlabel=short_key(key), ylabel="test error (%)")
        if others:
            label = other_values if isinstance(other_values, tuple) else (other_values,)
            ax.set_title(point_label(dict(zip(others, label))), fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _side_legend(fig, axes[0], legend)
    fig.suptitle(f"Test error vs {short_key(key)} (mean ± sd over seeds)")  # the caption explains the X marks
    return fig, left_out


def plot_error_bars(table: pd.DataFrame, runs: pd.DataFrame, arms: list[str],
                    colours: dict[str, str]) -> Figure:
    """Test error per arm for an experiment without a sweep: bars for mean ± sd, a dot per seed."""
    fig = Figure(figsize=(1.3 * len(arms) + 2.5, 3.6))
    _fixed_margins(fig, left=0.8, top=0.5)
    ax = fig.subplots()
    for i, arm in enumerate(arms):
        rows = table[table.arm == arm]
        if rows.empty:
            continue
        row = rows.iloc[0]
        if row.n:
            ax.bar(i, row.test_error_mean * 100, 0.6, color=colours[arm], alpha=0.85,
                   yerr=0 if np.isnan(row.test_error_sd) else row.test_error_sd * 100, capsize=4)
            errors = runs[(runs.arm == arm) & runs.test_error.notna()].test_error * 100
            ax.plot(i + np.linspace(-0.12, 0.12, len(errors)), errors, "o", color="black", markersize=3)
        if row.diverged or not row.n:
            ax.annotate(f"{row.diverged} diverged" if row.diverged else "no completed run",
                        (i, 0), xytext=(0, 4), textcoords="offset points", ha="center", fontsize="small")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set(ylabel="test error (%)", title="Test error per arm (bar: mean ± sd; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_advantage(paired: pd.DataFrame, x_key: str, y_key: str, arm: str, reference: str) -> Figure:
    """Heatmap over two swept values of the mean paired test-error difference arm - reference."""
    rows = paired[paired.arm == arm]
    xs = list(dict.fromkeys(rows[x_key]))
    ys = list(dict.fromkeys(rows[y_key]))
    grid = np.full((len(ys), len(xs)), np.nan)
    notes = {}
    for row in rows.itertuples(index=False):
        r = dict(zip(rows.columns, row))
        iy, ix = ys.index(r[y_key]), xs.index(r[x_key])
        grid[iy, ix] = r["diff_mean"] * 100
        if np.isnan(r["diff_mean"]):
            notes[iy, ix] = "no pairs" if not r["note"] else r["note"].split(";")[0].split(":")[-1].strip()
    # Wide enough for the title, whose length grows with the arm names.
    title = f"{arm} vs {reference}: mean paired test-error difference"
    fig = Figure(figsize=(max(1.4 * len(xs) + 3, 0.09 * len(title) + 0.5), 0.8 * len(ys) + 2.2),
                 layout="constrained")
    ax = fig.subplots()
    limit = np.nanmax(np.abs(grid)) if not np.isnan(grid).all() else 1.0
    cmap = colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    for (iy, ix), value in np.ndenumerate(grid):
        text = fmt(value, "+.2f") if not np.isnan(value) else notes.get((iy, ix), "n/a")
        ax.text(ix, iy, text, ha="center", va="center", fontsize="small",
                color="white" if not np.isnan(value) and abs(value) > 0.6 * limit else "black")
    ax.set_xticks(range(len(xs)), [value_label(v) for v in xs])
    ax.set_yticks(range(len(ys)), [value_label(v) for v in ys])
    ax.set(xlabel=short_key(x_key), ylabel=short_key(y_key))
    fig.colorbar(image, ax=ax, label=f"{arm} − {reference} (pp)\n< 0: {arm} better")
    fig.suptitle(title)
    return fig


def plot_steps(table: pd.DataFrame, keys: list[str], arms: list[str], colours: dict[str, str],
               target: str) -> tuple[Figure, int]:
    """Grouped bars: mean steps to the target per sweep point and arm, range over seeds as
    error bars, and reached/runs above each bar; arms that never reached it are labelled. Returns the
    figure and points left out."""
    points = list(dict.fromkeys(tuple(row) for row in table[keys].itertuples(index=False))) if keys else [()]
    left_out = max(0, len(points) - MAX_BAR_GROUPS)
    points = points[:MAX_BAR_GROUPS]
    width = 0.8 / max(1, len(arms))
    fig = Figure(figsize=(max(6.0, 0.5 + len(points) * len(arms) * 0.45) + _legend_width(arms), 4.2),
                 layout="constrained")
    ax = fig.subplots()
    labelled = set()
    for i, arm in enumerate(arms):
        for j, point in enumerate(points):
            match = table.arm == arm
            for key, value in zip(keys, point):
                match &= table[key] == value
            rows = table[match]
            if rows.empty:
                continue
            row = rows.iloc[0]
            x = j + (i - (len(arms) - 1) / 2) * width
            if row.reached == 0:
                unfinished = row.get("not_yet", 0) == row.runs
                ax.text(x, 0, "not reached yet" if unfinished else "not reached", rotation=90, ha="center",
                        va="bottom", fontsize="x-small", color=colours[arm])
                # An empty bar, so an arm that never reached the target still has its legend entry.
                ax.bar(x, 0, width, color=colours[arm], label=None if arm in labelled else arm)
                labelled.add(arm)
                continue
            err = [[row.step_mean - row.step_min], [row.step_max - row.step_mean]]
            ax.bar(x, row.step_mean, width, color=colours[arm], yerr=err, capsize=3,
                   label=None if arm in labelled else arm)
            # How many seeds the mean stands for: 1/5 and 5/5 draw the same bar.
            ax.annotate(f"{row.reached}/{row.runs}", (x, row.step_max), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize="x-small", color=colours[arm])
            labelled.add(arm)
    ax.margins(y=0.12)  # room above the tallest bar for its reached/runs label
    labels = [", ".join(value_label(v) for v in point) for point in points]
    # About 0.07 inch per character of tick label at the default font size.
    axes_width = fig.get_size_inches()[0] - 1 - _legend_width(arms)
    crowded = max(len(label) for label in labels) * 0.07 > axes_width / len(points)
    ax.set_xticks(range(len(points)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlim(-0.5, len(points) - 0.5)  # the "not reached" labels of the outer arms stay inside
    ax.set(xlabel=", ".join(short_key(key) for key in keys), ylabel="optimizer steps to target",
           title=f"Steps until {target} (mean; bars: range over seeds; reached/runs above)")
    ax.grid(axis="y", alpha=0.3)
    if labelled:  # beside the axes: inside, it covered the bars
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig, left_out


def plot_forest(paired: pd.DataFrame, keys: list[str], colours: dict[str, str], reference: str) -> tuple[Figure, int]:
    """Forest plot of the paired table: a row per sweep point and arm, the mean paired test-error
    difference (arm - reference) as a dot and its 95% interval as a line, zero marked, the
    numbers written at the right. Returns the figure and how many rows were left out."""
    left_out = max(0, len(paired) - MAX_FOREST_ROWS)
    rows = paired.iloc[:MAX_FOREST_ROWS]
    arms = list(dict.fromkeys(rows.arm))
    # The arm is named when there are several, or when there is no sweep point to name.
    labels = [", ".join(filter(None, [point_label({k: row[k] for k in keys}),
                                       row["arm"] if len(arms) > 1 or not keys else ""]))
              for _, row in rows.iterrows()]
    numbers = [_forest_numbers(row) for row in rows.itertuples()]
    left = 0.3 + 0.075 * max(len(label) for label in labels)
    right = 0.3 + 0.06 * max(len(text) for text in numbers)
    fig = Figure(figsize=(left + 4.5 + right, 0.32 * len(rows) + 1.3))
    _fixed_margins(fig, left=left, right=right, bottom=0.65, top=0.45)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.axvline(0, color="black", lw=1)
    for position, row, text in zip(y, rows.itertuples(), numbers):
        colour = colours[row.arm]
        if not np.isnan(row.ci_low):
            ax.plot([row.ci_low * 100, row.ci_high * 100], [position] * 2, color=colour, lw=2, solid_capstyle="butt")
        if not np.isnan(row.diff_mean):
            ax.plot(row.diff_mean * 100, position, "o", color=colour, markersize=6)
        ax.annotate(text, (1, position), xycoords=("axes fraction", "data"), xytext=(8, 0),
                    textcoords="offset points", va="center", fontsize="small", color="#333")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+g}" if value else "0"))
    ax.set_xlabel(f"test error, arm − {reference} (pp); left of 0: arm better")
    ax.grid(axis="x", alpha=0.3)
    arm_names = " / ".join(arms) if len(arms) > 1 else arms[0]
    ax.set_title(f"{arm_names} − {reference}: mean paired difference and 95% CI", fontsize="medium")
    return fig, left_out


def _forest_numbers(row) -> str:
    """The figures beside a forest-plot row: mean [interval], or why there is no interval."""
    if row.pairs == 0:
        return "no pairs"
    mean = pp(row.diff_mean)
    if np.isnan(row.ci_low):
        return f"{mean}, no CI (1 pair)" if row.pairs == 1 else f"{mean}, no CI (same in every pair)"
    return f"{mean} [{pp(row.ci_low)}, {pp(row.ci_high)}]"


def plot_activation_bands(frame: pd.DataFrame, positions: list[str], arms: list[str], colours: dict[str, str],
                          title: str) -> Figure:
    """One panel per position (rows) and arm (columns), as Ioffe & Szegedy's Figure 1(b, c): the 15th to 85th
    percentile of the position's values on the probe as a band over optimizer steps, the median as a line; each
    the mean over seeds at that step. `frame`: one row per run, step and position, with its arm."""
    present = [arm for arm in arms if (frame.arm == arm).any()]
    fig = Figure(figsize=(1.2 + 3.4 * len(present), 0.4 + 2.3 * len(positions)))
    _fixed_margins(fig, left=0.8, right=0.3, bottom=0.6, top=0.7, wspace=0.25, hspace=0.55)
    axes = np.atleast_2d(fig.subplots(len(positions), len(present), sharex=True, sharey="row", squeeze=False))
    for row, position in enumerate(positions):
        for column, arm in enumerate(present):
            ax = axes[row][column]
            runs = frame[(frame.arm == arm) & (frame.position == position)]
            bands = runs.groupby("step")[["p15", "p50", "p85"]].mean()
            if not bands.empty:
                ax.fill_between(bands.index, bands.p15, bands.p85, color=colours[arm], alpha=0.3, lw=0,
                                label="15th–85th percentile")
                ax.plot(bands.index, bands.p50, color=colours[arm], label="median")
            ax.set_title(f"{arm}: {position}", fontsize="medium")
            ax.grid(alpha=0.3)
            if row == len(positions) - 1:
                ax.set_xlabel("optimizer step")
            if column == 0:
                ax.set_ylabel("value on the probe")
    fig.suptitle(title)
    return fig
