"""Mutation testing of one module that decides a number, with mutmut (development only, not in CI).

    python -m scripts.mutation metrics.py                  # the module's own unit tests (MODULE_TESTS)
    python -m scripts.mutation methods/gr.py --tests tests/test_losses_beyond.py
    python -m scripts.mutation --list                      # the targeted modules and their tests

mutmut (3.x) rewrites every function of the module into small variants ("mutants": a `<` made
`<=`, a constant changed, a call argument dropped) and runs the tests that reach each function
against each variant; a mutant no test notices "survives" and points at a missing test or at code
that does not matter. It forks one process per mutant from a process that already imported torch,
which is what keeps a module to minutes on 2 cores; tests are picked per function from one traced
run of the given tests.

The work happens in a copy of the project under runs/mutation/<module>/ (the checkout is never
touched), rebuilt on every call. The end prints mutmut's counts and the score (killed / mutants
tested), and writes every survivor's diff to runs/mutation/<module>/survivors.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The modules that decide a published number, each with the fast tests that check it.
LOSS_TESTS = ("tests/test_losses.py", "tests/test_losses_beyond.py")
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "metrics.py": ("tests/test_metrics.py",),
    "losses.py": LOSS_TESTS,
    "methods/cole.py": LOSS_TESTS,
    "methods/base.py": LOSS_TESTS,
    "methods/apl.py": ("tests/test_losses.py",),
    "methods/role.py": ("tests/test_losses.py",),
    "methods/gr.py": LOSS_TESTS,
    "methods/large_loss.py": LOSS_TESTS,
    "methods/robust.py": LOSS_TESTS,
    "methods/pu.py": ("tests/test_pu.py",),
    "methods/vlpl/loss.py": ("tests/test_vlpl.py",),
    "methods/vlpl/scores.py": ("tests/test_vlpl.py", "tests/test_damp.py", "tests/test_gpr.py"),  # + AEVLP's crops
    "datasets.py": ("tests/test_labels.py", "tests/test_data_guards.py", "tests/test_bad_input.py",
                    "tests/test_skip_bad_images.py"),
    "training/engine.py": ("tests/test_selection.py",),
    "training/recipe.py": ("tests/test_recipe.py",),
    "training/checkpoint.py": ("tests/test_checkpoint_resume.py",),
    "instrumentation.py": ("tests/test_selection.py",),
    "preproc/generate_observed_labels.py": ("tests/test_labels.py",),
}


def project_files() -> list[str]:
    """The checkout's files as git sees them (tracked, and new files not ignored): no runs/ or datasets."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    return [name for name in listed if name and (REPO_ROOT / name).is_file()]


def prepare(module: str, tests: list[str], work: Path) -> None:
    """A fresh copy of the project in `work`, its pyproject telling mutmut what to mutate and run."""
    shutil.rmtree(work, ignore_errors=True)
    for name in project_files():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, work / name)
    # mutmut runs the tests inside mutants/: everything but the module is copied there as it is, as the
    # siblings (files or whole folders) of the module and of each folder above it
    parts = Path(module).parts
    others = sorted({"/".join(Path(name).parts[:depth + 1]) for name in project_files()
                     for depth in range(len(parts)) if Path(name).parts[:depth] == parts[:depth]}
                    - {"/".join(parts[:depth + 1]) for depth in range(len(parts))})
    settings = {
        "source_paths": [module],
        "also_copy": others,
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        # torch's thread pools do not survive mutmut's fork server; plain forks with one thread do
        "process_isolation": "fork",
    }
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))


def mutmut(work: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, env=env, text=True, **kwargs)


def report(work: Path) -> dict:
    mutmut(work, "export-cicd-stats", capture_output=True, check=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = mutmut(work, "results", capture_output=True, check=True).stdout.split("\n")
    survivors = [line.split(":")[0].strip() for line in listed if line.strip().endswith(": survived")]
    diffs = [mutmut(work, "show", name, capture_output=True, check=True).stdout for name in survivors]
    (work / "survivors.txt").write_text("\n".join(diffs))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", nargs="?", help="a path relative to the repository, e.g. metrics.py or methods/gr.py")
    parser.add_argument("--tests", nargs="+", help="the test files to run (default: the module's, see --list)")
    parser.add_argument("--list", action="store_true", help="print the targeted modules and their tests")
    args = parser.parse_args(argv)
    if args.list or args.module is None:
        for module, tests in MODULE_TESTS.items():
            print(f"{module:40s} {' '.join(tests)}")
        return 0
    if not (REPO_ROOT / args.module).is_file():
        print(f"error: {args.module} is not a file of the repository (e.g. metrics.py, methods/gr.py)", file=sys.stderr)
        return 2
    tests = args.tests or list(MODULE_TESTS.get(args.module, ()))
    if not tests:
        print(f"error: no tests known for {args.module}: give them with --tests tests/test_X.py", file=sys.stderr)
        return 2
    if shutil.which("mutmut") is None and subprocess.run([sys.executable, "-m", "mutmut", "--version"],
                                                          capture_output=True).returncode != 0:
        print("error: mutmut is not installed: pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    work = REPO_ROOT / "runs" / "mutation" / args.module.replace("/", "_").removesuffix(".py")
    prepare(args.module, tests, work)
    run = mutmut(work, "run")
    if run.returncode != 0:
        print(f"error: mutmut stopped with exit code {run.returncode}; its output is above", file=sys.stderr)
        return run.returncode
    stats = report(work)
    tested = stats["killed"] + stats["survived"] + stats["timeout"] + stats["suspicious"] + stats["segfault"]
    caught = stats["killed"] + stats["timeout"] + stats["segfault"]
    print(f"{args.module}: {caught} of {tested} mutants caught ({100 * caught / max(tested, 1):.1f}%), "
          f"{stats['survived']} survived, {stats['no_tests']} reached by no test; "
          f"survivors' diffs: {work / 'survivors.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
