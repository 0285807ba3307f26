"""Mean ± std of test mAP over seeds, per dataset x loss, from run folders' results.json.

    python scripts/summarize.py runs/coco_em runs/coco_em_apl [--out DIR]

Each argument is a run folder or a folder holding run folders (a seed sweep);
every results.json below it is read. A row pools the seeds of one dataset x loss
under one protocol (backbone, image size, val variant, stop rule, data variant,
and every other setting but the seed and where/how fast it ran); runs of one
dataset x loss under different protocols make one row each, and the `setting`
column names what differs. A seed that appears twice in one row is refused,
naming both folders. Runs that did not complete are left out, with a warning:
their numbers were not earned. std is the sample standard deviation (n - 1).

Prints a Markdown table and writes it as summary.md and summary.csv in --out
(default: the first argument).
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
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a folder; pass run folders or folders of run folders")
        hits = sorted(path.rglob("results.json"))
        if not hits:
            raise UserError(f"no results.json under {path}; pass the --out folder of main.py runs")
        found += hits
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
    stop = f"patience {patience}, max {config['epochs']} ep" if patience else f"best of {config['epochs']} ep"
    if config.get("stop_drop"):
        stop += f", or a drop > {config['stop_drop']:g}"
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
    # The loss settings one by one, so that a row's setting names the one that differs (hyper.pseudo_labels).
    config = with_defaults(results["config"])
    hyper = {f"hyper.{k}": v for k, v in config.pop("hyper", {}).items()}
    return {**{k: v for k, v in config.items() if k not in POOLABLE}, **hyper, **protocol(results),
            "label_protocol": results.get("label_protocol")}


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in find_results(paths):
        results = read_json(path, "results file")
        if results.get("status") != "completed":
            log.warning(f"left out {path.parent}: status {results.get('status')!r} "
                        f"({results.get('reason', 'not finished')}); resume it with main.py --resume")
            continue
        runs.append({"path": path.parent, "results": results})
    if not runs:
        raise UserError("no completed run to summarise")
    return runs


def _setting(protocol: dict, others: list[dict]) -> str:
    """What sets this protocol apart from the others of its dataset x loss ("-" when it is alone)."""
    differ = sorted(k for k in protocol if any(other.get(k) != protocol[k] for other in others))
    if "labels" in differ and "label_protocol" in differ:  # the labels column says it; the full record only adds noise
        differ.remove("label_protocol")
    return ", ".join(f"{k}={json.dumps(protocol[k])}" for k in differ) or "-"


def summarize(runs: list[dict]) -> list[dict]:
    """One row per dataset x loss x protocol; refuses a seed repeated within a row."""
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
        rows.append({"dataset": dataset, "loss": loss, "setting": _setting(json.loads(key), siblings),
                     "n": len(members), "seeds": " ".join(map(str, sorted(by_seed))),
                     "test_map_mean": statistics.fmean(test), "test_map_std": std(test),
                     "val_map_mean": statistics.fmean(val), "val_map_std": std(val), **protocol(members[0]["results"])})
    return rows


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f} (1 seed)"


def markdown(rows: list[dict]) -> str:
    header = ["dataset", "loss", "setting", "seeds", "test mAP", "val mAP", "backbone", "image size", "val", "stop rule", "data variant",
              "labels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["dataset"], r["loss"], r["setting"], f"{r['n']} ({r['seeds']})", _pm(r["test_map_mean"], r["test_map_std"]),
                 _pm(r["val_map_mean"], r["val_map_std"]), r["backbone"], str(r["image_size"]), r["val_variant"],
                 r["stop_rule"], r["data_variant"], r["labels"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_text_atomic(path, text.getvalue())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, help="folder for summary.md and summary.csv (default: the first RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        rows = summarize(load_runs(args.run_dirs))
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    table = markdown(rows)
    sys.stdout.write(table)
    out = args.out or args.run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    md = write_text_atomic(out / "summary.md", "Test mAP at the best-val epoch, mean ± sample std over seeds.\n\n" + table)
    write_csv(out / "summary.csv", rows)
    log.info(f"written {md} and {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
