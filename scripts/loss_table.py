"""Markdown table of test mAP (at the best val epoch), mean ± std over seeds, per loss.

    python scripts/loss_table.py runs/digits_losses     # folders named <loss>_s<seed>

The std is the sample standard deviation (ddof 1) over the seeds found.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np


def main(root: Path) -> None:
    maps: dict[str, list[float]] = {}
    for results in sorted(root.glob("*_s*/results.json")):
        match = re.fullmatch(r"(.+)_s(\d+)", results.parent.name)
        data = json.loads(results.read_text())
        if match and data.get("status") == "completed":
            maps.setdefault(match.group(1), []).append(data["test_map"])
    print("| loss | test mAP | seeds |\n| --- | --- | --- |")
    for loss, values in maps.items():
        std = np.std(values, ddof=1) if len(values) > 1 else float("nan")
        print(f"| `{loss}` | {np.mean(values):.2f} ± {std:.2f} | {len(values)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits_losses"))
