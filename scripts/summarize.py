"""Mean ± std of test mAP over seeds, per dataset x loss, from run folders' results.json.

    python scripts/summarize.py runs/coco_em runs/coco_em_apl [--out DIR]
    python scripts/summarize.py runs/grid --format latex --plot bars.png --curves curves.png

Each argument is a run folder or a folder holding run folders (a seed sweep, a grid);
every results.json below it is read, except those of a run's phases (linear_init's
linear/ and fine_tune/: the run is one row). A row pools the seeds of one dataset x loss
under one protocol (backbone, image size, val variant, stop rule, data variant, number
of processes, and every other setting but the seed and where/how fast it ran); runs of
one dataset x loss under different protocols make one row each, and the `setting`
column names what differs. A seed that appears twice in one row is refused,
naming both folders. Runs that did not complete are left out, with a warning:
their numbers were not earned. std is the sample standard deviation (n - 1).

Prints the table (`--format`: markdown, text, csv, or latex: booktabs, methods as rows,
datasets as columns, the best per column in bold) and writes it as summary.md and
summary.csv in --out (default: the first argument). `--plot` draws test mAP per method
and dataset with the std as error bars, `--curves` val and test mAP per epoch of every
run (scripts/report_plots.py).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo's modules

from config import with_defaults  # noqa: E402
from errors import UserError  # noqa: E402
from fileio import read_json, write_text_atomic  # noqa: E402

log = logging.getLogger("summarize")

# Settings that may differ between the seeds of one pooled group: the seed itself and
# where or how fast the run went, never what it computed.
POOLABLE = {"seed", "out", "device", "num_workers", "data_dir", "image_root", "deterministic"}
COLUMNS = ["dataset", "loss", "setting", "n", "seeds", "test_map_mean", "test_map_std", "val_map_mean", "val_map_std",
           "backbone", "image_size", "val_variant", "stop_rule", "data_variant", "labels"]


def find_results(paths: list[Path]) -> list[Path]:
    """Every results.json under `paths`, but those of a run's phases: a folder below another
    results.json (linear_init's linear/ and fine_tune/) is part of that run."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a folder; pass run folders or folders of run folders")
        hits = sorted(path.rglob("results.json"))
        if not hits:
            raise UserError(f"no results.json under {path}; pass the --out folder of main.py runs")
        runs = {hit.parent for hit in hits}
        found += [hit for hit in hits if runs.isdisjoint(hit.parent.parents)]
    return sorted(set(found))


def data_variant(results: dict) -> str:
    """The dataset variant (e.g. which NUS-WIDE release) that main.py recorded in results.json."""
    return str(results.get("dataset_variant") or "-")


def labels(results: dict) -> str:
    """The observed-label protocol main.py recorded: single positive, or PU-MLC's known ratio ("-" if unrecorded)."""
    recorded = results.get("label_protocol") or {}
    if recorded.get("protocol") == "known_ratio":
        return f"known ratio {recorded['known_ratio']:g}"
    if recorded.get("protocol") == "single_positive":
        counts = (recorded.get("num_pos", 1), recorded.get("num_neg", 0))
        return "single positive" if counts == (1, 0) else f"{counts[0]} pos / {counts[1]} neg"
    return "-"


def protocol(results: dict) -> dict:
    """The protocol columns of one run; image size may be in results (recorded by main) or in the config."""
    config = results["config"]
    patience = config.get("patience", 0)
    epochs = results.get("phase_epochs", config["epochs"])  # a phase's own length (linear_init's linear phase)
    stop = f"patience {patience}, max {epochs} ep" if patience else f"best of {epochs} ep"
    if config.get("stop_drop"):
        stop += f", or a drop > {config['stop_drop']:g}"
    if "linear_phase" in results:
        stop = f"linear best of {config['linear_epochs']} ep, then {stop}"
    return {
        "backbone": config["model"],
        "image_size": results.get("image_size", config.get("image_size", "?")),
        "val_variant": config.get("val_set_variant", "clean"),
        "stop_rule": stop,
        "data_variant": data_variant(results),
        "labels": labels(results),
    }


def _comparable(results: dict) -> dict:
    # A run older than a setting ran with its default: it pools with newer runs at that default.
    # The label protocol in full (its sampling seed too): runs on other observed labels are never pooled.
    # The processes of a torchrun run too: each one's BatchNorm and loss statistics see its share of the batch.
    # The loss settings one by one, so that a row's setting names the one that differs (hyper.pseudo_labels).
    config = with_defaults(results["config"])
    hyper = {f"hyper.{k}": v for k, v in config.pop("hyper", {}).items()}
    return {**{k: v for k, v in config.items() if k not in POOLABLE}, **hyper, **protocol(results),
            "label_protocol": results.get("label_protocol"), "world_size": results.get("world_size", 1)}


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in find_results(paths):
        results = _with_phase_facts(path.parent, read_json(path, "results file"))
        if results.get("status") != "completed":
            log.warning(f"left out {path.parent}: status {results.get('status')!r} "
                        f"({results.get('reason', 'not finished')}); resume it with main.py --resume")
            continue
        runs.append({"path": path.parent, "results": results})
    if not runs:
        raise UserError("no completed run to summarise")
    return runs


def _with_phase_facts(run: Path, results: dict) -> dict:
    """linear_init's top-level results.json holds the run's result; the facts of what it trained on
    (image size, data variant, label protocol) and its epochs are in its fine-tune phase's."""
    fine_tune = run / "fine_tune" / "results.json"
    if "linear_phase" not in results or not fine_tune.is_file():
        return results
    facts = {k: v for k, v in read_json(fine_tune, "results file").items() if k not in ("config", "phase_epochs")}
    return {**facts, **results}


def _setting(protocol: dict, others: list[dict]) -> str:
    """What sets this protocol apart from the others of its dataset x loss ("-" when it is alone)."""
    differ = sorted(k for k in protocol if any(other.get(k) != protocol[k] for other in others))
    if "labels" in differ and "label_protocol" in differ:  # the labels column says it; the full record only adds noise
        differ.remove("label_protocol")
    return ", ".join(f"{k}={json.dumps(protocol[k])}" for k in differ) or "-"


def summarize(runs: list[dict]) -> list[dict]:
    """One row per dataset x loss x protocol (its runs in `runs`); refuses a seed repeated within a row."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        config = run["results"]["config"]
        key = json.dumps(_comparable(run["results"]), sort_keys=True, default=str)
        groups.setdefault((config["dataset"], config["loss"], key), []).append(run)
    rows = []
    for (dataset, loss, key), members in sorted(groups.items()):
        siblings = [json.loads(k) for (d, lo, k) in groups if (d, lo) == (dataset, loss) and k != key]
        by_seed: dict[int, Path] = {}
        for run in members:
            seed = run["results"]["config"]["seed"]
            if seed in by_seed:
                raise UserError(f"{dataset} x {loss}: seed {seed} appears twice, in {by_seed[seed]} and {run['path']}; "
                                f"a repeated seed is not a new sample: leave one folder out")
            by_seed[seed] = run["path"]
        test = [run["results"]["test_map"] for run in members]
        val = [run["results"]["best_val_map"] for run in members]
        std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
        setting = _setting(json.loads(key), siblings)
        rows.append({"dataset": dataset, "loss": loss, "setting": setting,
                     # the name of its row in the LaTeX table and the plots
                     "method": loss if setting == "-" else f"{loss} ({setting})",
                     "n": len(members), "seeds": " ".join(map(str, sorted(by_seed))),
                     "test_map_mean": statistics.fmean(test), "test_map_std": std(test),
                     "val_map_mean": statistics.fmean(val), "val_map_std": std(val), **protocol(members[0]["results"]),
                     "runs": members})
    return rows


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f} (1 seed)"


def _cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table of the text and Markdown formats: its header and one list of cells per row."""
    header = ["dataset", "loss", "setting", "seeds", "test mAP", "val mAP", "backbone", "image size", "val",
              "stop rule", "data variant", "labels"]
    body = [[r["dataset"], r["loss"], r["setting"], f"{r['n']} ({r['seeds']})",
             _pm(r["test_map_mean"], r["test_map_std"]), _pm(r["val_map_mean"], r["val_map_std"]), r["backbone"],
             str(r["image_size"]), r["val_variant"], r["stop_rule"], r["data_variant"], r["labels"]] for r in rows]
    return header, body


def markdown(rows: list[dict]) -> str:
    header, body = _cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def text(rows: list[dict]) -> str:
    """Aligned columns, for a terminal."""
    header, body = _cells(rows)
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() + "\n"
                   for cells in [header, *body])


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in COLUMNS} for r in rows)
    return buffer.getvalue()


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                      "\\": r"\textbackslash{}"}


def _tex(name: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in name)


def latex(rows: list[dict]) -> str:
    """A booktabs table: methods as rows, datasets as columns, test mAP mean ± std, the best of each column in bold."""
    datasets = sorted({r["dataset"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["dataset"]): r for r in rows}
    # the best as printed: two means that round alike are both the best
    best = {d: max(round(r["test_map_mean"], 2) for r in rows if r["dataset"] == d) for d in datasets}

    def shown(m: str, d: str) -> str:
        if (m, d) not in cell:
            return "--"
        r = cell[m, d]
        number = f"{r['test_map_mean']:.2f}" + (f" \\pm {r['test_map_std']:.2f}" if r["n"] > 1 else "")
        return f"$\\mathbf{{{number}}}$" if round(r["test_map_mean"], 2) == best[d] else f"${number}$"

    lines = ["% \\usepackage{booktabs}. Test mAP at the best-val epoch: mean \\pm sample std over seeds "
             "(no std: one seed); the best of each column in bold.",
             f"\\begin{{tabular}}{{l{'c' * len(datasets)}}}", "\\toprule",
             " & ".join(["Method", *map(_tex, datasets)]) + " \\\\", "\\midrule"]
    lines += [" & ".join([_tex(m), *(shown(m, d) for d in datasets)]) + " \\\\" for m in methods]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS = {"markdown": markdown, "text": text, "csv": csv_text, "latex": latex}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, help="folder for summary.md and summary.csv (default: the first RUN_DIR)")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="the table printed: markdown (default), text, csv, or latex (booktabs, methods x "
                             "datasets)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="a bar chart of test mAP per method and dataset, the std over seeds as error bars")
    parser.add_argument("--curves", type=Path, metavar="FILE.png", help="val and test mAP per epoch of every run")
    args = parser.parse_args(argv)
    try:
        for path in (args.plot, args.curves):
            if path is not None and path.suffix.lower() != ".png":
                raise UserError(f"{path}: the figures are PNG files; name it FILE.png")
        rows = summarize(load_runs(args.run_dirs))
        sys.stdout.write(FORMATS[args.format](rows))
        out = args.out or args.run_dirs[0]
        out.mkdir(parents=True, exist_ok=True)
        md = write_text_atomic(out / "summary.md", "Test mAP at the best-val epoch, mean ± sample std over seeds.\n\n"
                               + markdown(rows))
        write_text_atomic(out / "summary.csv", csv_text(rows))
        log.info(f"written {md} and {out / 'summary.csv'}")
        if args.plot or args.curves:
            from scripts import report_plots  # matplotlib: only for the figures
        if args.plot:
            log.info(f"written {report_plots.bar_chart(rows, args.plot)}")
        if args.curves:
            log.info(f"written {report_plots.curves(rows, args.curves)}")
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
