"""Wall time of `python main.py -h` against its floor, each a fresh interpreter.

    python -m benchmarks.startup_time            # 5 runs each, the median

Rows: the bare interpreter, `import torch` alone (with its exit), `python main.py -h`, and
the slowest packages `main.py -h` imports by `python -X importtime` (cumulative, one run).
The help imports no torch: it reads only the flags' tables (`losses.py`, `nets/__init__.py`,
`config.py`), which name their builders without importing them (`lazy.py`); torchvision,
whose import pulls in torch._dynamo, is imported only where a backbone or a transform is built.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall_time(argv: list[str], runs: int) -> float:
    """Median seconds of `argv` from start to exit, output discarded."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slowest_imports(argv: list[str], top: int) -> list[tuple[float, str]]:
    """The `top` packages `argv` imports (a name without a dot, at any depth) by cumulative seconds
    (`python -X importtime`)."""
    err = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and "." not in name:
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for label, argv in (("python -c pass", ["-c", "pass"]), ("python -c 'import torch'", ["-c", "import torch"]),
                        ("python main.py -h", ["main.py", "-h"])):
        print(f"{label:<28} {wall_time([sys.executable, *argv], args.runs):6.2f} s  (median of {args.runs})")
    print("slowest packages main.py -h imports (cumulative, one run under -X importtime):")
    for seconds, name in slowest_imports(["main.py", "-h"], 6):
        print(f"  {seconds:6.2f} s  {name}")


if __name__ == "__main__":
    main()
