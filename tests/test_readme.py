"""Every command the README and the pages of docs/ show is valid as written: the digits ones run, the others parse."""
from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

from cli import parse_args
from conftest import slice_digits
from flags import build_parser
from losses import LOSSES
from main import main
from presets import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
# the README and every page of docs/: their commands are checked alike
PAGES = "\n".join([README, *(p.read_text() for p in sorted((REPO_ROOT / "docs").glob("*.md")))])
PLACEHOLDER = re.compile(r"[A-Z]{3,}|<|\[|\$")  # DATASET, <out>, [--flag ...], $loss: a template, not a command
LOSS_NAME = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, LOSSES)) + r")(?![\w-])")  # -l GPR is no template


def commands(program: str) -> list[list[str]]:
    found = []
    for line in PAGES.splitlines():
        for match in re.finditer(re.escape(program) + r"(?P<args>[^`#\n]*)", line):
            args = match.group("args").strip().rstrip(".,;:")
            if not PLACEHOLDER.search(LOSS_NAME.sub("", args)) and "&&" not in args:
                found.append(shlex.split(args))
    return found


# --resume / --eval-only examples name a run folder of the reader's; -h only prints
MAIN_COMMANDS = [argv for argv in commands("python main.py") if not {"--resume", "--eval-only", "-h"} & set(argv)]
# a preset names the authors' data files (word vectors, 10%-known labels): its flags are checked, its files not
PRESET_COMMANDS = [argv for argv in MAIN_COMMANDS if "--preset" in argv]
MAIN_COMMANDS = [argv for argv in MAIN_COMMANDS if argv not in PRESET_COMMANDS]
DIGITS = [argv for argv in MAIN_COMMANDS if "-d" not in argv or argv[argv.index("-d") + 1] == "digits"]
OTHERS = [argv for argv in MAIN_COMMANDS if argv not in DIGITS]


def test_the_readme_has_commands_of_each_kind():
    assert [] in DIGITS  # the quick start
    assert len(DIGITS) >= 2 and len(OTHERS) >= 5


@pytest.mark.parametrize("argv", DIGITS, ids=" ".join)
def test_digits_commands_run(argv, digits_master, tmp_path, monkeypatch):
    """As written, on a slice of digits for one epoch (the flags given after override the README's)."""
    monkeypatch.chdir(REPO_ROOT)  # README paths are relative to the repository
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    assert main([*argv, "-g", "cpu", "--epochs", "1", "--data-dir", str(data), "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("argv", OTHERS, ids=" ".join)
def test_benchmark_commands_parse(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    parse_args([*argv, "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("argv", PRESET_COMMANDS, ids=" ".join)
def test_preset_commands_parse(argv):
    build_parser().parse_args(argv)


@pytest.mark.parametrize("module", sorted({argv[0] for argv in commands("python -m ")} - {"pytest"}))
def test_python_m_modules_exist(module):
    assert importlib.util.find_spec(module) is not None, module


def test_help_and_readme_cite_papers_not_internal_documents(capsys):
    assert main(["-h"]) == 0
    help_text = capsys.readouterr().out
    for text in (PAGES, help_text):
        assert "SPEC" not in text
    iu_help = help_text[help_text.index("iu:"):help_text.index("pr:")]
    assert "--num-neg" not in iu_help  # a flag of preproc.generate_observed_labels, not of main.py
