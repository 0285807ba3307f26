"""The report's figures, drawn with matplotlib from summarize.py's rows (one per dataset x method).

    bar_chart  test mAP per method (x) and dataset (one bar colour each), the sample std
               over seeds as error bars (none for a single seed), the mean printed on each bar
    curves     val (left) and test (right) mAP per epoch, one row of panels per dataset, one
               colour per method, one thin line per run (seed)

The figures have fixed sizes (BAR_SIZE, CURVES_WIDTH x CURVES_ROW_HEIGHT per dataset, in
pixels at DPI), so a report regenerated later is laid out the same.
"""
from __future__ import annotations

from pathlib import Path

from errors import UserError

DPI = 100
BAR_SIZE = (1000, 500)
CURVES_WIDTH, CURVES_ROW_HEIGHT = 1000, 360


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot and --curves draw with matplotlib, which is not installed: "
                        "pip install -r requirements.txt") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # never bbox_inches="tight": it changes the size
    return path


def bar_chart(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(datasets)
    fig, ax = plt.subplots(figsize=(BAR_SIZE[0] / DPI, BAR_SIZE[1] / DPI), layout="constrained")
    for k, dataset in enumerate(datasets):
        mine = {r["method"]: r for r in rows if r["dataset"] == dataset}
        xs = [i + (k - (len(datasets) - 1) / 2) * width for i, m in enumerate(methods) if m in mine]
        means = [mine[m]["test_map_mean"] for m in methods if m in mine]
        stds = [mine[m]["test_map_std"] if mine[m]["n"] > 1 else 0.0 for m in methods if m in mine]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=dataset)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    crowded = len(methods) > 6  # slanted names do not overlap
    ax.set_xticks(range(len(methods)), methods, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("test mAP (mean ± std over seeds)")
    ax.set_ylim(0, 105)
    if len(datasets) > 1:
        ax.legend(title="dataset")
    else:
        ax.set_title(datasets[0])
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def curves(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in rows})
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    fig, axes = plt.subplots(len(datasets), 2, squeeze=False, layout="constrained",
                             figsize=(CURVES_WIDTH / DPI, CURVES_ROW_HEIGHT * len(datasets) / DPI))
    for (val_ax, test_ax), dataset in zip(axes, datasets):
        for row in (r for r in rows if r["dataset"] == dataset):
            for i, run in enumerate(row["runs"]):
                epochs = run["results"].get("epochs") or []
                x = [e["epoch"] for e in epochs]
                for ax, key in ((val_ax, "val_map"), (test_ax, "test_map")):
                    ax.plot(x, [e[key] for e in epochs], color=colours[row["method"]], linewidth=1, marker=".",
                            alpha=0.8, label=row["method"] if i == 0 else None)
        for ax, split in ((val_ax, "val"), (test_ax, "test")):
            ax.set_title(f"{dataset}: {split} mAP per epoch (one line per seed)")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{split} mAP")
            ax.xaxis.get_major_locator().set_params(integer=True)
        test_ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
