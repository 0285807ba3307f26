"""python -m scripts.grid: see scripts/grid/launch.py and docs/grid.md."""
import sys

from scripts.grid.launch import main

sys.exit(main())
