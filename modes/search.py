"""Cole et al.'s hyperparameter search: one run per (learning rate, batch size) of a grid.

    python main.py -d pascal -l an --search                      # lr {1e-2..1e-5} x batch {8, 16}
    python main.py -l EM --search --search-lrs 1e-3 1e-4 --search-bsizes 32

Each grid point is a full run in `<out>/lr<lr>_bs<bsize>/` (kept). The run with the
best val mAP is selected and its test mAP reported; `<out>/search.json` holds
every row (rewritten after each run) and the log prints the table. A run whose
loss diverges is recorded as such and the search goes on. `--resume <out>` keeps the
grid points already completed or diverged, resumes the one that was cut off and runs
the rest.
"""
from __future__ import annotations

import dataclasses
import logging
import math

from config import Config
from errors import UserError
from fileio import write_json_atomic
from instrumentation import claim_run_folder, run_results
from modes.single import run_single
from training.distributed import is_main
from training.engine import NonFiniteLoss
from training.trainer import restart_if_unstarted

log = logging.getLogger(__name__)

DIVERGED = {"best_epoch": 0, "best_val_map": math.nan, "test_map": math.nan}


def grid_table(rows: list[dict], best: dict | None) -> str:
    lines = ["| lr | batch | best epoch | val mAP | test mAP | status |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        mark = " **best**" if row is best else ""
        lines.append(f"| {row['lr']:g} | {row['bsize']} | {row['best_epoch']} | {row['best_val_map']:.2f} | "
                     f"{row['test_map']:.2f} | {row['status']}{mark} |")
    return "\n".join(lines)


def _finished(out) -> tuple[dict, str] | None:
    """(summary, status) of a grid point an earlier process completed or saw diverge, else None."""
    results = run_results(out)
    status = results.get("status")
    if status == "diverged":
        return DIVERGED, status
    if status == "completed":
        return {key: results[key] for key in DIVERGED}, status
    return None


def run_search(cfg: Config) -> dict:
    """One run on every grid point; returns the best row plus the whole grid."""
    if not cfg.resume and is_main():
        claim_run_folder(cfg.out, cfg.to_dict())  # what --resume reads
    rows: list[dict] = []
    for lr in cfg.search_lrs:
        for bsize in cfg.search_bsizes:
            point = dataclasses.replace(cfg, lr=lr, bsize=bsize, search=False, out=cfg.out / f"lr{lr:g}_bs{bsize}")
            if (done := _finished(point.out) if cfg.resume else None) is not None:
                summary, status = done
                log.info(f"search: lr {lr:g}, batch {bsize}: {status} earlier, kept")
            else:
                log.info(f"search: lr {lr:g}, batch {bsize} -> {point.out}")
                point = restart_if_unstarted(point, point.out)
                try:
                    summary, status = run_single(point), "completed"
                except NonFiniteLoss as err:
                    log.warning(f"search: lr {lr:g}, batch {bsize} diverged: {err}")
                    summary, status = DIVERGED, "diverged"
            rows.append({"lr": lr, "bsize": bsize, "status": status, "out": str(point.out), **summary})
            if is_main():
                write_json_atomic(cfg.out / "search.json", {"config": cfg.to_dict(), "rows": rows, "best": None})
    finished = [row for row in rows if row["status"] == "completed"]
    if not finished:
        raise UserError(f"every run of the search diverged (see {cfg.out}); lower the learning rates of --search-lrs")
    best = max(finished, key=lambda row: row["best_val_map"])
    if is_main():
        write_json_atomic(cfg.out / "search.json", {"config": cfg.to_dict(), "rows": rows, "best": best})
    log.info("search results (selected by val mAP):\n" + grid_table(rows, best))
    log.info(f"search: best lr {best['lr']:g}, batch {best['bsize']}: val mAP {best['best_val_map']:.2f}, "
             f"test mAP {best['test_map']:.2f}")
    return {**best, "grid": rows}
