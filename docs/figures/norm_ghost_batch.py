"""docs/figures/norm_ghost_batch.png from the report of configs/norm_ghost_batch.yaml.

    bnexp run configs/norm_ghost_batch.yaml --data-dir ../shared/data
    bnexp report norm_ghost_batch
    python docs/figures/norm_ghost_batch.py results/norm_ghost_batch/report/tables/runs.csv

Test error against the batch BN normalises over (its ghost size, largest on the left as in Wu & He's
Table 2), at one optimizer batch of 32: BN and batch renorm as lines (mean and each seed), GroupNorm,
LayerNorm and no normalisation, which have no ghost size, as bands (mean +- sd over the seeds).
It also prints what the report's paired table (every arm against GroupNorm) does not give: each BN and
renorm ghost size against the same kind at 32 (no ghost batch), paired by seed, with the same t interval.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

GHOSTS = [32, 16, 8, 4, 2]
LINES = {"batch": ("BatchNorm", "tab:blue"), "renorm": ("batch renorm", "tab:orange")}
BANDS = {"group": ("GroupNorm (8 groups)", "tab:green"), "layer": ("LayerNorm", "tab:purple"),
         "none": ("no normalisation", "tab:gray")}


def main(runs_csv: str, out: str = str(Path(__file__).with_suffix(".png"))) -> None:
    runs = pd.read_csv(runs_csv)
    runs = runs[runs.status == "completed"]
    error = runs.groupby("arm").test_error.apply(lambda e: 100 * e)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    x = range(len(GHOSTS))
    for name, (label, colour) in BANDS.items():
        values = error.get(name)
        if values is None or values.empty:
            continue
        mean, sd = values.mean(), values.std(ddof=1)
        ax.axhspan(mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)
        ax.axhline(mean, color=colour, lw=1.2, ls="--", label=f"{label}: {mean:.1f}%")
    for prefix, (label, colour) in LINES.items():
        per_ghost = [error.get(f"{prefix}_g{g}", pd.Series(dtype=float)) for g in GHOSTS]
        for i, values in zip(x, per_ghost):
            ax.plot([i] * len(values), values, "o", color=colour, alpha=0.35, ms=3)
        ax.plot(list(x), [v.mean() for v in per_ghost], "o-", color=colour, lw=1.8, label=label)
    ax.set_xticks(list(x), [str(g) for g in GHOSTS])
    ax.set_xlabel("samples BN normalises over (ghost batch); optimizer batch 32")
    ax.set_ylabel("test error (%)")
    ax.set_title("Fashion-MNIST, E1 CNN: normalisation batch at a fixed optimizer batch", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    print(out)
    by_seed = runs.pivot_table(index="seed", columns="arm", values="test_error") * 100
    print("| arm | vs | diff pp | 95% CI | seeds worse |\n|---|---|---|---|---|")
    for prefix in LINES:
        for g in GHOSTS[1:]:
            arm, ref = f"{prefix}_g{g}", f"{prefix}_g{GHOSTS[0]}"
            if arm not in by_seed or ref not in by_seed:
                continue
            pair = by_seed[[arm, ref]].dropna()
            diff = pair[arm] - pair[ref]
            ci = stats.ttest_rel(pair[arm], pair[ref]).confidence_interval(0.95)
            print(f"| {arm} | {ref} | {diff.mean():+.2f} | [{ci.low:+.2f}, {ci.high:+.2f}] | {(diff > 0).sum()}/{len(diff)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
