"""Train a single-positive multi-label classifier and report its mAP.

    python main.py -d coco -l EM_APL -g 0 -s 1
    python main.py              # the embedded digits dataset, prepared on first use

Only wiring: the command line (cli.py) -> one frozen Config -> the training mode
it names (modes/) -> an exit code. Under torchrun, each process does this inside the
run's process group (training/distributed.py).
"""
from __future__ import annotations

import logging
import sys

from cli import parse_args
from errors import UserError
from modes import run
from training import distributed

log = logging.getLogger("spml")


def main(argv: list[str] | None = None) -> int:
    # under torchrun the other processes log only errors: the run says everything once
    level = logging.INFO if distributed.is_main() else logging.ERROR
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    try:
        cfg = parse_args(argv)
        with distributed.process_group(cfg.device):
            run(cfg)
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT; results.json already says "interrupted"
    return 0


if __name__ == "__main__":
    sys.exit(main())
