"""Train a single-positive multi-label classifier and report its mAP.

    python main.py -d coco -l EM_APL -g 0 -s 1
    python main.py              # the embedded digits dataset, prepared on first use

Only wiring: the command line (cli.py) -> one frozen Config -> the training mode
it names (modes/) -> an exit code. Under torchrun, each process does this inside the
run's process group, and one line says why a run stopped (training/processes.py, stop.py).
"""
from __future__ import annotations

import logging
import sys

from errors import UserError
from flags import build_parser

log = logging.getLogger("spml")


def main(argv: list[str] | None = None) -> int:
    if {"-h", "--help"} & set(sys.argv[1:] if argv is None else argv):
        # the help reads only the flags' tables: it comes before the imports of torch (2 s or more on a small CPU)
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit_:
            return int(exit_.code or 0)
    from cli import parse_args
    from modes import run
    from training import distributed, processes, stop

    # under torchrun the other processes log only errors: the run says everything once
    level = logging.INFO if distributed.is_main() else logging.ERROR
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    # SIGTERM (a batch system's stop) as Ctrl-C; under torchrun, the processes meet before parsing the flags
    with stop.signals_interrupt(), processes.rendezvous():
        try:
            cfg = processes.agree(lambda: parse_args(argv))  # an error in any process stops all, said once
            with processes.process_group(cfg.device):
                run(cfg)
        except SystemExit as exit_:  # an argparse error
            return int(exit_.code or 0)
        except (UserError, KeyboardInterrupt) as err:  # results.json already says why the run stopped
            return stop.exit_code(err)
    return 0

if __name__ == "__main__":
    sys.exit(main())
