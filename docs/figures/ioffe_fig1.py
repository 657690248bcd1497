"""docs/figures/ioffe_fig1.png: validation accuracy over steps (left) and the last hidden layer's sigmoid-input
percentiles (right), no_bn against bn, from a results folder of configs/ioffe_fig1.yaml.
Usage: python docs/figures/ioffe_fig1.py RESULTS/ioffe_fig1 docs/figures/ioffe_fig1.png"""
import sys
import pandas as pd
from matplotlib.figure import Figure
import bnexp

exp = bnexp.load_experiment(sys.argv[1])
runs = exp.runs[["run_id", "arm", "seed"]]
evals = pd.concat([exp.step_evals[["run_id", "step", "val_accuracy"]],
                   exp.history[["run_id", "step", "val_accuracy"]]]).merge(runs, on="run_id")
bands = exp.activations.merge(runs, on="run_id")
last = list(dict.fromkeys(bands.position))[-1]
colours = {"no_bn": "#4c72b0", "bn": "#dd8452"}
labels = {"no_bn": "without BN", "bn": "with BN"}
fig = Figure(figsize=(10.5, 4))
fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.85, wspace=0.22)
ax_acc, ax_act = fig.subplots(1, 2)
for arm in ("no_bn", "bn"):
    curve = evals[evals.arm == arm].groupby("step").val_accuracy.agg(["mean", "min", "max"])
    ax_acc.plot(curve.index, curve["mean"], color=colours[arm], label=labels[arm])
    ax_acc.fill_between(curve.index, curve["min"], curve["max"], color=colours[arm], alpha=0.2, lw=0)
    per_step = bands[(bands.arm == arm) & (bands.position == last)].groupby("step")[["p15", "p50", "p85"]].mean()
    ax_act.fill_between(per_step.index, per_step.p15, per_step.p85, color=colours[arm], alpha=0.25, lw=0)
    for column, style in (("p15", ":"), ("p50", "-"), ("p85", ":")):
        ax_act.plot(per_step.index, per_step[column], style, color=colours[arm],
                    label=f"{labels[arm]}: 15th, 50th, 85th pct." if column == "p50" else None)
ax_acc.set(xlabel="optimizer step", ylabel="validation accuracy", ylim=(0.7, 1.0),
           title="(a) validation accuracy (mean, range of 3 seeds)")
ax_act.set(xlabel="optimizer step", ylabel="sigmoid input",
           title=f"(b, c) input of the last hidden sigmoids ({last})")
for ax in (ax_acc, ax_act):
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right" if ax is ax_acc else "best")
fig.suptitle("Ioffe & Szegedy 2015, Fig. 1 on CPU: MNIST, 3 x 100 sigmoid, batch 60, SGD lr 0.1, 50,400 steps", y=0.99)
fig.savefig(sys.argv[2], dpi=90)
