"""Time `compute_metrics` on a COCO-test-sized score matrix (40,137 x 80); target: well under 1 s.

    python -m benchmarks.bench_metrics [--repeats 5]
"""
import argparse
import time

import numpy as np

from metrics import compute_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=40137)
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    targets = rng.rand(args.rows, args.classes) < 0.036  # COCO: ~2.9 positives per image
    preds = np.clip(0.3 * targets + 0.7 * rng.rand(args.rows, args.classes), 0, 1).astype(np.float32)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = compute_metrics(preds, targets)
        times.append(time.perf_counter() - start)
    print(f"compute_metrics on {args.rows} x {args.classes}: median {np.median(times):.3f} s, "
          f"min {min(times):.3f} s over {args.repeats} runs (mAP {result['map']:.2f})")


if __name__ == "__main__":
    main()
