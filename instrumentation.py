"""The run folder: config, text log, per-epoch JSON lines and the results file.

    <out>/config.json     the effective configuration
    <out>/train.log       the console log
    <out>/metrics.jsonl   one JSON object per finished epoch, appended as it finishes
    <out>/results.json    config, status, best epoch and its val/test mAP, every epoch;
                          rewritten atomically after each epoch, so it is never half-written
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from errors import UserError
from fileio import json_line, write_json_atomic, write_text_atomic
from preflight import new_run_folder

log = logging.getLogger(__name__)


RUN_FILES = ("config.json", "train.log", "metrics.jsonl", "results.json", "search.json")  # all a run writes but checkpoints


def claim_run_folder(out: Path, config: dict) -> None:
    """Create a new run folder holding its config.json; a folder that already holds files is refused."""
    new_run_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", config)
    except OSError as err:  # a disk that filled up or went read-only since the checks
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from err


def run_results(out: Path) -> dict:
    """The folder's results.json, or {} before one is written (or when it cannot be read)."""
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def run_status(out: Path) -> str | None:
    """What the folder's results.json says (running, completed, interrupted, diverged); None before it exists."""
    return run_results(out).get("status")


class SkippedImages:
    """The unreadable images a run left out (--skip-bad-images), whichever pass met them (training, scoring,
    evaluation): each named once in the log, every one listed in results.json (`unreadable_images`)."""

    SHOWN = 10  # paths named in one log line; results.json has them all

    def __init__(self):
        self.paths: list[str] = []

    def note(self, paths: list[str], where: str) -> None:
        """The images a pass over a split did not see; the ones not met before are logged."""
        known = set(self.paths)
        new = [path for path in dict.fromkeys(paths) if path not in known]
        if not new:
            return
        self.paths += new
        more = f" and {len(new) - self.SHOWN} more (results.json lists them all)" if len(new) > self.SHOWN else ""
        log.warning(f"{where}: {len(new)} unreadable image(s) left out (--skip-bad-images): "
                    f"{', '.join(new[:self.SHOWN])}{more}")


class RunLog:
    """Owns one run folder; refuses to reuse a folder that already holds files, unless resuming it.

    `resumed_epochs`: the epoch records of the checkpoint a resumed run starts
    from; metrics.jsonl is rewritten to exactly those, dropping any epoch logged
    after the checkpoint, so no epoch appears twice. `info` holds run facts
    (image size, ...) copied into every results.json. `writer=False` (the other ranks of a
    torchrun run): the same records are kept, nothing is written.
    """

    def __init__(self, out: Path, config: dict, resumed_epochs: list[dict] | None = None, writer: bool = True):
        self.out = out
        self.config = config
        self.writer = writer
        self.info: dict = {}
        self.epochs: list[dict] = list(resumed_epochs or [])
        self.skipped = SkippedImages()
        self._handler = None
        if not writer:
            return
        if resumed_epochs is None:
            claim_run_folder(out, config)
        if resumed_epochs is not None:
            lines = "".join(json_line(record) + "\n" for record in self.epochs)
            write_text_atomic(out / "metrics.jsonl", lines)
        self._handler = logging.FileHandler(out / "train.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(self._handler)

    def log_epoch(self, record: dict, best: dict, status: str = "running") -> None:
        self.epochs.append(record)
        if not self.writer:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json_line(record) + "\n")
        self.write_results(best, status)

    def write_results(self, best: dict, status: str, **extra) -> None:
        """`status`: running, completed, or interrupted / diverged (then `reason` says why)."""
        if not self.writer:
            return
        # per epoch, not summed: the same unreadable image is skipped again every epoch
        skipped = max((record.get("skipped_images", 0) for record in self.epochs), default=0)
        if self.config.get("report_test_oracle") and self.epochs:
            extra["test_map_chosen_on_test"] = test_oracle(self.epochs)
        write_json_atomic(
            self.out / "results.json",
            {"config": self.config, "status": status, **extra, **best, **self.info,
             "skipped_images": skipped, "unreadable_images": self.skipped.paths, "epochs": self.epochs},
        )

    def close(self) -> None:
        if self._handler is None:
            return
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()


def test_oracle(epochs: list[dict]) -> dict:
    """The number PU-MLC's code reports (its "h_mAP"): the best test mAP over every epoch and both weights.

    Chosen on the test set, so it is an optimistic bound, not a result; results.json keeps it
    apart from the val-selected `test_map`.
    """
    def score(record: dict) -> float:
        return max(record["test_map"], record.get("ema_test_map", -math.inf))

    best = max(epochs, key=score)
    weights = "ema" if best.get("ema_test_map", -math.inf) > best["test_map"] else "regular"
    return {"map": score(best), "epoch": best["epoch"], "weights": weights,
            "note": "best epoch and weights chosen on the test set, as PU-MLC's code reports; not a model selection"}


def epoch_line(record: dict, epochs: int, is_best: bool) -> str:
    return (
        f"epoch {record['epoch']:>2}/{epochs}  loss {record['train_loss']:.4f}  "
        f"val mAP {record['val_map']:6.2f}  test mAP {record['test_map']:6.2f}  "
        + (f"EMA val {record['ema_val_map']:6.2f} test {record['ema_test_map']:6.2f}  " if "ema_val_map" in record else "")
        + f"({record['time_s']:.1f} s){'  *best' if is_best else ''}"
    )
