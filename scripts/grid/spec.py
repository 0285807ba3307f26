"""What a grid is: its runs (datasets x losses x seeds, with main.py flags for all), their
folders, and the record of the grid folder (grid.json).

A run's folder is named from the axes the grid was given: the dataset if `datasets` was
given, the loss if `losses` was, then `seed<N>` (`digits_an_seed0`, `EM_seed1`, or `seed2`
for a grid of seeds alone, the layout of scripts/sweep_seeds.sh). Before anything starts,
every run's flags go through main.py's own parser (`cli.parse_args`), so an unknown dataset
or a bad flag stops the grid in one line, and the configuration each run will have is
known: launching again into a grid folder is refused when any of its runs would differ
from the run already there, in anything but what `main.py --resume` may change (the device
and the loader workers).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shlex
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from errors import UserError
from fileio import read_json, write_json_atomic

GRID_FILE = "grid.json"
# What a grid folder holds besides its runs
NOT_RUNS = {GRID_FILE, "grid.lock", "grid.sbatch", "logs", "summary.md", "summary.csv"}
# What may change between two launches of one run: what main.py --resume may change
RELAUNCH_FREE = {"out", "device", "num_workers"}
FILE_KEYS = ("datasets", "losses", "seeds", "flags")
# main.py flags the grid sets for every run itself -> how to give them to the grid
GRID_SETS = {"seed": "give the seeds with --seeds", "out": "the grid names each run's folder under its --out",
             "resume": "a grid goes on with `python -m scripts.grid --out DIR --resume`",
             "eval_only": "the grid trains runs; evaluate a checkpoint with main.py --eval-only"}


@dataclass(frozen=True)
class Run:
    index: int  # its place in grid.json, and its Slurm array index
    name: str  # its folder under the grid folder
    argv: tuple[str, ...]  # main.py flags, without -g and --out (each launch sets them)


@dataclass(frozen=True)
class Spec:
    """datasets / losses: None when the grid has no such axis (main.py's flags or defaults say it)."""

    datasets: tuple[str, ...] | None
    losses: tuple[str, ...] | None
    seeds: tuple[int, ...]
    flags: tuple[str, ...]

    def runs(self) -> list[Run]:
        runs = []
        for dataset, loss, seed in itertools.product(self.datasets or [None], self.losses or [None], self.seeds):
            parts = [part for part in (dataset, loss) if part is not None] + [f"seed{seed}"]
            axes = [*(["-d", dataset] if dataset else []), *(["-l", loss] if loss else []), "-s", str(seed)]
            argv = [*self.flags, *axes]
            runs.append(Run(len(runs), "_".join(parts), tuple(argv)))
        return runs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "Spec":
        axis = lambda key: None if saved[key] is None else tuple(saved[key])  # noqa: E731
        return cls(axis("datasets"), axis("losses"), tuple(saved["seeds"]), tuple(saved["flags"]))


def read_grid_file(path: Path) -> dict:
    """A grid from a TOML or JSON file: `datasets`, `losses`, `seeds` (lists) and `flags` (a list or one string)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"--file {path}: cannot read it ({err.strerror or err})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise UserError(f"--file {path} is not valid {kind} ({err})") from None
    if not isinstance(values, dict) or (unknown := sorted(set(values) - set(FILE_KEYS))):
        raise UserError(f"--file {path}: unknown keys {unknown}; a grid file holds {', '.join(FILE_KEYS)}")
    if isinstance(values.get("flags"), str):
        values["flags"] = shlex.split(values["flags"])
    for key, kind in (("datasets", str), ("losses", str), ("seeds", int), ("flags", str)):
        value = values.get(key)
        if value is not None and not (isinstance(value, list) and value and all(type(v) is kind for v in value)):
            raise UserError(f"--file {path}: {key} must be a non-empty list of {kind.__name__}s, got {value!r}")
    return values


def check_flags(spec: Spec, gpus: bool) -> None:
    """The main.py flags, parsed by main.py's own parser; refuses those the grid sets itself."""
    from cli import _given_flags  # main.py's parser (and torch): only once the grid's own flags are valid

    given = _given_flags(list(spec.flags))
    for dest, fix in [*GRID_SETS.items(), ("loss", "give the losses with --losses only" if spec.losses else None),
                      ("dataset", "give the datasets with --datasets only" if spec.datasets else None),
                      ("gpu", "--gpus gives each run its GPU" if gpus else None)]:
        if dest in given and fix:
            raise UserError(f"main.py flag --{dest.replace('_', '-')} given after --: {fix}")


@contextlib.contextmanager
def _quiet():
    """parse_args tells what it defaults (a shortened warm-up, no CUDA): each run's log says it."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def run_configs(runs: list[Run], gpu: str) -> dict[str, dict]:
    """The configuration each run will have, as main.py would build it (less RELAUNCH_FREE); nothing is written."""
    from cli import parse_args

    configs = {}
    with tempfile.TemporaryDirectory(prefix="spml-grid-check-") as scratch, _quiet():
        for run in runs:
            try:
                config = parse_args([*run.argv, "-g", gpu, "--out", str(Path(scratch) / run.name)]).to_dict()
            except UserError as err:
                raise UserError(f"run {run.name}: {err}") from None
            configs[run.name] = _comparable(config)
    return configs


def _comparable(config: dict) -> dict:
    """The settings that make a run what it is, as JSON holds them (tuples as lists)."""
    from config import with_defaults  # a run older than a setting ran with its default

    return json.loads(json.dumps({k: v for k, v in with_defaults(config).items() if k not in RELAUNCH_FREE}))


def _differences(theirs: dict, mine: dict) -> str:
    flat = lambda d: {**{k: v for k, v in d.items() if k != "hyper"},  # noqa: E731
                      **{f"hyper.{k}": v for k, v in (d.get("hyper") or {}).items()}}
    theirs, mine = flat(theirs), flat(mine)
    keys = sorted(k for k in theirs.keys() | mine.keys() if theirs.get(k) != mine.get(k))
    return "; ".join(f"{k} {json.dumps(theirs.get(k))} there, {json.dumps(mine.get(k))} here" for k in keys[:4]) + \
        ("; ..." if len(keys) > 4 else "")


def _spec_difference(stored: Spec, spec: Spec) -> str:
    differ = [f"its {key} are {' '.join(map(str, getattr(stored, key) or ['-']))} (here: "
              f"{' '.join(map(str, getattr(spec, key) or ['-']))})" for key in ("datasets", "losses", "seeds")
              if getattr(stored, key) != getattr(spec, key)]
    if stored.flags != spec.flags:
        differ.append(f"its main.py flags are `{shlex.join(stored.flags)}` (here: `{shlex.join(spec.flags)}`)")
    return ", ".join(differ)


def read_record(out: Path) -> dict | None:
    return read_json(out / GRID_FILE, "the grid's record") if (out / GRID_FILE).is_file() else None


def check_folder(out: Path, spec: Spec, configs: dict[str, dict]) -> None:
    """`out` may receive this grid: new, empty, the same grid (or the same grown by axis values), or a folder
    of its runs without grid.json (made by an older sweep); anything else is refused, naming the difference."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the grid")
    record = read_record(out)
    if record is not None:
        stored = Spec.from_dict(record["spec"])
        saved = {run["name"]: run["config"] for run in record["runs"]}
        fix = "pass a new --out, or --resume alone to finish the grid it holds"
        if dropped := sorted(set(saved) - set(configs)):
            raise UserError(f"{out} holds another grid ({_spec_difference(stored, spec)}): its runs "
                            f"{', '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''} are not in this one; {fix}")
        for name, config in saved.items():
            if config != configs[name]:
                raise UserError(f"{out} holds another grid: run {name} differs "
                                f"({_differences(config, configs[name])}); {fix}")
        return
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        if entry.name in NOT_RUNS:
            continue
        if entry.name not in configs:
            raise UserError(f"{out} holds {entry.name}, which is not a run of this grid; pass a new --out "
                            f"(a grid folder holds its runs only)")
        if not (entry / "config.json").is_file():
            if entry.is_dir() and not any(entry.iterdir()):
                continue
            raise UserError(f"{entry} holds no run of main.py (no config.json); move it away and launch again")
        if (saved := _comparable(read_json(entry / "config.json", "the run's"))) != configs[entry.name]:
            raise UserError(f"{entry} was trained with other settings ({_differences(saved, configs[entry.name])}); "
                            f"pass a new --out for this grid")


def write_record(out: Path, spec: Spec, runs: list[Run], configs: dict[str, dict], states: dict[str, dict],
                 slurm: dict | None = None) -> None:
    """grid.json: the grid, and every run with its state as last seen by the launcher (each run's own
    results.json is the truth; `python -m scripts.grid --out DIR --status` refreshes this)."""
    write_json_atomic(out / GRID_FILE, {
        "spec": spec.to_dict(),
        "runs": [{"index": run.index, "name": run.name, "argv": list(run.argv), **states.get(run.name, {}),
                  "config": configs[run.name]} for run in runs],
        **({"slurm": slurm} if slurm else {}),
    })
