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
import os
import tempfile
from pathlib import Path

from errors import UserError

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLog:
    """Owns one run folder; refuses to reuse a folder that already holds files."""

    def __init__(self, out: Path, config: dict):
        if out.exists() and any(out.iterdir()):
            raise UserError(f"run folder {out} already exists and is not empty; pass a new --out")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.config = config
        self.epochs: list[dict] = []
        write_json_atomic(out / "config.json", config)
        self._handler = logging.FileHandler(out / "train.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(self._handler)

    def log_epoch(self, record: dict, best: dict, status: str = "running") -> None:
        self.epochs.append(record)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.write_results(best, status)

    def write_results(self, best: dict, status: str) -> None:
        write_json_atomic(
            self.out / "results.json",
            {"config": self.config, "status": status, **best, "epochs": self.epochs},
        )

    def close(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()


def epoch_line(record: dict, epochs: int, is_best: bool) -> str:
    return (
        f"epoch {record['epoch']:>2}/{epochs}  loss {record['train_loss']:.4f}  "
        f"val mAP {record['val_map']:6.2f}  test mAP {record['test_map']:6.2f}  "
        f"({record['time_s']:.1f} s){'  *best' if is_best else ''}"
    )
