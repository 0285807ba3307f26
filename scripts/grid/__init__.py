"""A grid of main.py runs (datasets x losses x seeds): here, N at a time or one per GPU, or as a Slurm job array.

    spec.py    the grid: its runs, their folders and main.py flags, the checks, grid.json
    state.py   where a run stands (its results.json and last attempt) and what a launch does with it
    local.py   runs here, in parallel, stopped as one by Ctrl-C
    slurm.py   the sbatch job array and its tasks
    launch.py  the command line (`python -m scripts.grid`), the report at the end

Documented in docs/grid.md.
"""
