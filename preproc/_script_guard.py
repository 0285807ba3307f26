"""Imported (first thing) by a preproc tool started as a file, `python preproc/NAME.py`: the project's
modules are importable only from the repository root, so it says the form that works and exits 2."""
import os
import shlex
import sys

_name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
sys.stderr.write(f"error: run the preproc tools as modules from the repository root: "
                 f"python -m preproc.{_name} {shlex.join(sys.argv[1:])}".rstrip() + "\n")
sys.exit(2)
