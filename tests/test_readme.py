"""Every command the README and the pages of docs/ show is valid as written: the digits ones run, the others parse."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli import parse_args
from config import Config
from conftest import slice_digits
from flags import build_parser
from losses import LOSSES
from main import main
from preproc.generate_observed_labels import generate_observed_labels
from preset_command import with_preset
from presets import REPO_ROOT, RUN_PRESETS

README = (REPO_ROOT / "README.md").read_text()
# the README and every page of docs/: their commands are checked alike
PAGES = "\n".join([README, *(p.read_text() for p in sorted((REPO_ROOT / "docs").glob("*.md")))])
TEMPLATE = re.compile(r"<|\[|\$")  # <out>, [--flag ...], $loss: a template, not a command
# a word the reader fills in (DATASET, DIR, VECTORS.npy); loss names (EM_APL, ASL) are real values
PLACEHOLDER_WORD = re.compile(r"(?:^|[/=.])([A-Z][A-Z0-9_]{2,})(?:$|[./])")


def is_template(args: str) -> bool:
    words = [m.group(1) for token in args.split() for m in PLACEHOLDER_WORD.finditer(token)]
    return bool(TEMPLATE.search(args)) or any(word not in LOSSES for word in words)


def commands(program: str) -> list[list[str]]:
    found = []
    for line in PAGES.splitlines():
        for match in re.finditer(re.escape(program) + r"(?P<args>[^`#\n]*)", line):
            args = match.group("args").strip().rstrip(".,;:")
            if not is_template(args) and "&&" not in args:
                found.append(shlex.split(args))
    return found


def test_placeholders_are_told_from_values():
    assert is_template("-d DATASET -l LOSS") and is_template("--word-vectors VECTORS.npy") and is_template("--out DIR/run")
    assert is_template("preproc.NAME")
    assert not is_template("-l EM_APL") and not is_template("-l EM_PL_ASL --clip-model data/tiny_clip.json")


# --resume / --eval-only examples name a run folder of the reader's; -h only prints
MAIN_COMMANDS = [argv for argv in commands("python main.py") if not {"--resume", "--eval-only", "-h"} & set(argv)]
# a preset names the authors' data files (word vectors, 10%-known labels): its flags are checked, its files not
PRESET_COMMANDS = [argv for argv in MAIN_COMMANDS if "--preset" in argv]
MAIN_COMMANDS = [argv for argv in MAIN_COMMANDS if argv not in PRESET_COMMANDS]
DIGITS = [argv for argv in MAIN_COMMANDS if "-d" not in argv or argv[argv.index("-d") + 1] == "digits"]
OTHERS = [argv for argv in MAIN_COMMANDS if argv not in DIGITS]


def test_the_readme_has_commands_of_each_kind():
    assert [] in DIGITS  # the quick start
    assert len(DIGITS) >= 2 and len(OTHERS) >= 5 and len(PRESET_COMMANDS) >= 1


def assert_config_takes_the_flags(argv: list[str], cfg: Config) -> None:
    """Every setting `argv` gives (after the last of a repeated flag, as argparse) is in `cfg` as given:
    a flag the CLI dropped or overrode would fail here. Settings that the CLI derives (-g -> device,
    --fast) have no field of their own name and are left to their own tests."""
    parser = build_parser()
    given, default = vars(parser.parse_args(argv)), vars(parser.parse_args([]))
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} | dataclasses.asdict(cfg.hyper)
    checked = []
    for name, value in given.items():
        if value == default[name] or name not in fields:
            continue
        if isinstance(value, Path):
            value = value.absolute()
        elif isinstance(value, list):
            value = tuple(value)
        assert fields[name] == value, f"{name}: the command gives {value!r}, the config holds {fields[name]!r}"
        checked.append(name)
    assert checked or argv == [], f"no setting of {argv} was checked"


@pytest.mark.parametrize("argv", DIGITS, ids=" ".join)
def test_digits_commands_run(argv, digits_master, tmp_path, monkeypatch):
    """As written, on a slice of digits for one epoch (the flags given after override the README's): the run
    completes with the settings the command gives."""
    monkeypatch.chdir(REPO_ROOT)  # README paths are relative to the repository
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    argv = [*argv, "-g", "cpu", "--epochs", "1", "--data-dir", str(data), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    phases = [results] if "epochs" in results else [json.loads((tmp_path / "run" / phase / "results.json").read_text())
                                                    for phase in ("linear", "fine_tune")]  # linear_init's two phases
    assert results["status"] == "completed" and all(phase["status"] == "completed" for phase in phases)
    assert all(len(phase["epochs"]) >= 1 and 0 <= phase["test_map"] <= 100 for phase in phases)
    assert_config_takes_the_flags(argv, Config.from_dict(results["config"], tmp_path))


@pytest.mark.parametrize("argv", OTHERS, ids=" ".join)
def test_benchmark_commands_configure_what_they_say(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    argv = [*argv, "--out", str(tmp_path / "run")]
    assert_config_takes_the_flags(argv, parse_args(argv))


@pytest.fixture(scope="module")
def preset_data(digits_master, tmp_path_factory):
    """A digits slice per label protocol a preset asks for, and random class word vectors."""
    def folder(protocol: dict) -> Path:
        root = slice_digits(digits_master, tmp_path_factory.mktemp("preset_digits"), 40, 20, copy_images=False)
        options = {k: v for k, v in protocol.items() if k != "protocol"}
        generate_observed_labels(root, **options)
        np.save(root / "vectors.npy", np.random.RandomState(0).randn(10, 300).astype(np.float32))
        return root
    return folder


@pytest.mark.parametrize("argv", PRESET_COMMANDS, ids=" ".join)
def test_preset_commands_expand_to_their_published_flags(argv, preset_data, tmp_path, monkeypatch):
    """The preset's expansion and the cross-checks of the CLI, on a data folder holding the labels it asks for."""
    monkeypatch.chdir(REPO_ROOT)
    name = argv[argv.index("--preset") + 1]
    data = preset_data(RUN_PRESETS[name].labels)
    argv = [*argv, "-g", "cpu", "--data-dir", str(data), "--out", str(tmp_path / "run")]
    if "--word-vectors" in RUN_PRESETS[name].flags:
        argv += ["--word-vectors", str(data / "vectors.npy")]
    cfg = parse_args(argv)
    assert cfg.preset == name
    assert_config_takes_the_flags(with_preset(argv), cfg)


@pytest.mark.parametrize("argv", [argv for argv in commands("python -m scripts.grid") if argv], ids=" ".join)
def test_grid_commands_parse(argv):
    """The grid's own flags, and main.py's after --, as the grid reads them (nothing runs)."""
    from scripts.grid.launch import build_parser as grid_parser

    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    grid_parser().parse_args(own)
    build_parser().parse_args(flags)


@pytest.mark.parametrize("module", sorted({argv[0] for argv in commands("python -m ")} - {"pytest"}))
def test_python_m_modules_exist(module):
    assert importlib.util.find_spec(module) is not None, module


def test_help_and_readme_cite_papers_not_internal_documents(capsys):
    assert main(["-h"]) == 0
    help_text = capsys.readouterr().out
    for text in (PAGES, help_text):
        assert "SPEC" not in text
    # users do not have the project's issues: nothing they read names one
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    shipped = [REPO_ROOT / name for name in listed.split() if not name.startswith("tests/")
               and Path(name).suffix in {".py", ".md", ".sh", ".txt", ".toml"}]
    named = [f"{p.relative_to(REPO_ROOT)}: {m.group()}" for p in shipped
             for m in re.finditer(r"(?i)\bissues? #?\d+", p.read_text())]
    assert named == [] and not re.search(r"(?i)\bissues? #?\d+", help_text)
    iu_help = help_text[help_text.index("iu:"):help_text.index("pr:")]
    assert "--num-neg" not in iu_help  # a flag of preproc.generate_observed_labels, not of main.py


def anchor(heading: str) -> str:
    """GitHub's id of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_of_the_readme_and_docs_leads_somewhere():
    """The pages link each other and data/*/README.md: a moved section or file would leave a dead link."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")),
             *sorted((REPO_ROOT / "data").glob("*/README.md")), REPO_ROOT / "data" / "README.md"]
    dead = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # a web address
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                dead.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif fragment and fragment not in {anchor(h) for h in re.findall(r"(?m)^#+ (.*)$", linked.read_text())}:
                dead.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert dead == []
