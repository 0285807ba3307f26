"""A published command in one flag (`--preset`): its flags put behind the user's, and the label
protocol it reproduces checked against the data folder (presets.RUN_PRESETS holds the commands)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from errors import UserError
from preproc.generate_observed_labels import label_protocol
from presets import PRESET_DEPENDENTS, RUN_PRESETS, how_to_prepare

log = logging.getLogger(__name__)


def with_preset(argv: list[str] | None) -> list[str]:
    """`argv` behind the flags of its --preset, if it has one: argparse keeps the last value, so the user's win;
    a preset flag that serves another the user gives another value goes (presets.PRESET_DEPENDENTS)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    finder = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    finder.add_argument("--preset", choices=sorted(RUN_PRESETS))
    for flag in PRESET_DEPENDENTS:
        finder.add_argument(*(("-d", flag) if flag == "--dataset" else (flag,)))
    mine = vars(finder.parse_known_args(argv)[0])
    name = mine.pop("preset", None)
    if name is None:
        return argv
    flags = list(RUN_PRESETS[name].flags)
    theirs = vars(finder.parse_known_args(flags)[0])
    for flag, dependents in PRESET_DEPENDENTS.items():
        dest = flag.lstrip("-").replace("-", "_")
        if dest in mine and mine[dest] != theirs.get(dest):
            for dependent in dependents:
                if dependent in flags:
                    del flags[flags.index(dependent):flags.index(dependent) + 2]
    log.info(f"--preset {name}: {' '.join(flags)}")
    return [*flags, *argv]


def check_preset_labels(preset: str, dataset: str, data_dir: Path) -> None:
    """A preset reproduces a label protocol: refuse a data folder that holds another one."""
    if not (data_dir / "formatted_train_labels.npy").is_file():
        raise UserError(f"--preset {preset}: {data_dir} holds no formatted dataset; "
                        f"{how_to_prepare(dataset, data_dir)}")
    wanted, found = RUN_PRESETS[preset].labels, label_protocol(data_dir)
    if any(found.get(key) != value for key, value in wanted.items()):
        defaults = {"num_pos": 1, "num_neg": 0}  # the sampler's own: the command need not repeat them
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in wanted.items()
                         if key != "protocol" and defaults.get(key) != value)
        sample = f"python -m preproc.generate_observed_labels --dataset {dataset} --data-dir"
        if found.get("protocol", "").startswith("unrecorded"):  # sampled before the protocol was recorded
            fix = f"run `{sample} {data_dir} {flags}` (it records the protocol with the labels)"
        else:  # sampling in place would replace the labels the folder's other runs trained on: a copy
            copy = data_dir.with_name(f"{data_dir.name}_{preset}")
            fix = (f"sample them into a copy: `cp -r {data_dir} {copy} && {sample} {copy} {flags}`, "
                   f"then pass --data-dir {copy}")
        raise UserError(f"--preset {preset} trains on the authors' observed labels ({wanted['protocol']}, {flags}), "
                        f"but {data_dir} holds {found.get('protocol')} labels: {fix}")
