"""Plot a training run's curves from its log.csv: training loss, simulated and real-data validation SNR.

Usage: python scripts/plot_campaign.py RUN_FOLDER [RUN_FOLDER ...]   (writes RUN_FOLDER/curve.png)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(folder: Path) -> Path:
    """Write ``folder/curve.png`` from ``folder/log.csv``."""
    with open(folder / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [(int(r["step"]), float(r["loss_g"])) for r in rows if r["kind"] == "train" and r["loss_g"]]
    val = [r for r in rows if r["kind"] == "val"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        a.plot(*zip(*train, strict=True), lw=0.8)
    a.set(xlabel="step", ylabel="generator loss", title=f"{folder.name}: training loss")
    for key, label in (("snr_db", "simulated validation"), ("real_snr_db", "real-data validation")):
        points = [(int(r["step"]), float(r[key])) for r in val if r.get(key)]
        if points:
            b.plot(*zip(*points, strict=True), marker="o", label=label)
    b.set(xlabel="step", ylabel="mean SNR dB", title="validation")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    fig.tight_layout()
    out = folder / "curve.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(plot(Path(arg)))
