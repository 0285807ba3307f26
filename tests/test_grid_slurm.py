"""The grid through a real Slurm: Debian's munged, slurmctld and slurmd, started here in a temporary
folder on ports of their own (`.ci/run` installs them), run a 2 losses x 2 seeds digits grid as one job array."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import slice_digits

from scripts.grid.launch import main

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # where Debian puts the daemons
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, node: str) -> str:
    """One node (this machine, every core) in one partition; auth through our own munged's socket; no cgroups,
    no accounting: what a single-machine Slurm needs and nothing else."""
    return "\n".join([
        "ClusterName=spmltest", f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root / 'munge.sock'}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; yields the environment its commands need (SLURM_CONF)."""
    if missing := [name for name in DAEMONS if shutil.which(name, path=SBIN) is None]:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm is not installed ({', '.join(missing)}); .ci/run installs it")
        pytest.skip(f"Slurm is not installed ({', '.join(missing)}): apt-get install slurmctld slurmd slurm-client "
                    f"munge (as .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their users: it needs root")
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SBIN}
    daemons = [
        ["munged", "-F", "-f", f"--socket={root / 'munge.sock'}", f"--key-file={key}",
         f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}",
         f"--log-file={root / 'munged.log'}"],
        ["slurmctld", "-D", "-c", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf), "-N", node],
    ]
    procs = []
    try:
        for argv in daemons:
            with open(root / f"{argv[0]}.out", "w") as console:
                procs.append(subprocess.Popen(argv, env=env, stdout=console, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            if argv[0] == "munged":
                _wait(lambda: (root / "munge.sock").exists(), root, "munged's socket")
        _wait(lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                     text=True).stdout.strip() == "idle", root, "the node to be idle")
        yield {"SLURM_CONF": str(conf), "PATH": SBIN}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(condition, root: Path, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in sorted(root.glob("*.out")))
            pytest.fail(f"Slurm did not come up ({what}):\n{logs}")
        time.sleep(0.2)


def test_a_digits_grid_runs_as_a_slurm_job_array(slurm, digits_master, tmp_path, monkeypatch, capsys):
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    out = tmp_path / "grid"
    grid = ["--out", str(out), "--losses", "an", "EM", "--seeds", "0", "1", "--slurm", "--jobs", "2",
            "--cpus-per-task", "1"]
    flags = ["--", "--epochs", "1", "--data-dir", str(data)]
    argv = [*grid, *flags]
    codes: list[int] = []
    waiting = threading.Thread(target=lambda: codes.append(main([*grid, "--wait", *flags])), daemon=True)
    waiting.start()  # submits, then waits for the array to end
    deadline = time.monotonic() + 60
    while "slurm" not in _record(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    job = _record(out)["slurm"]["job"]
    assert main(argv) == 2  # while its array is queued or running, the grid is not launched again
    assert main(["--out", str(out), "--status"]) == 0
    printed = capsys.readouterr()
    assert f"Slurm job {job} of the grid in {out} is still queued or running" in printed.err
    assert f"Slurm job array {job}: queued or running" in printed.err and printed.out.startswith("run ")
    waiting.join(timeout=600)
    assert codes == [0]
    printed = capsys.readouterr()
    assert "grid " + str(out) + ": 4 runs: 4 completed, 0 failed, 0 interrupted" in printed.err
    rows = [line for line in printed.out.splitlines() if line.startswith("| digits |")]
    assert len(rows) == 2 and all("| 2 (0 1) |" in row for row in rows), printed.out

    record = _record(out)
    assert "#SBATCH --array=0-3%2" in (out / "grid.sbatch").read_text()
    for run in record["runs"]:  # each run in its own array task, which recorded how main.py ended
        attempt = json.loads((out / "logs" / f"{run['name']}.attempt.json").read_text())
        assert attempt["slurm_job"] == f"{job}_{run['index']}" and attempt["exit_code"] == 0
        assert json.loads((out / run["name"] / "results.json").read_text())["status"] == "completed"
        assert f"{run['name']}: start" in (out / "logs" / f"slurm-{job}_{run['index']}.out").read_text()

    assert main(argv) == 0  # launched again: nothing left to submit
    assert capsys.readouterr().err.count("already completed, skipped") == 4
    assert _record(out)["slurm"]["job"] == job


def _record(out: Path) -> dict:
    try:
        return json.loads((out / "grid.json").read_text())
    except OSError:
        return {}
