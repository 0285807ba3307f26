"""scripts/summarize.py's report: what one row is (a linear_init run, runs of another number of processes)."""
from __future__ import annotations

import json
from pathlib import Path

import summarize  # scripts/, on pytest's pythonpath
from test_seed_sweeps import fake_run


def _record(folder: Path, **fields) -> None:
    """Fields of results.json that fake_run leaves at their defaults (what main.py records beside the config)."""
    path = folder / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _linear_init_run(run: Path, seed: int, test_map: float) -> None:
    """The three results.json files of a linear_init run (`--linear-epochs 2 --epochs 1`), as modes/linear.py writes them."""
    config = {"train_mode": "linear_init", "linear_epochs": 2, "epochs": 1, "patience": 1, "model": "digits_cnn",
              "dataset": "digits"}
    fake_run(run / "linear", seed, 60.0, **{**config, "patience": 0})  # the linear phase trains every epoch
    _record(run / "linear", phase_epochs=2)
    fake_run(run / "fine_tune", seed, test_map, **config)
    _record(run / "fine_tune", phase_epochs=1, image_size=24, label_protocol={"protocol": "single_positive"})
    top = json.loads((run / "fine_tune" / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({"config": top["config"], "status": "completed", "best_epoch": 1,
                                                  "best_val_map": 80.0, "test_map": test_map, "linear_phase": {}}))


def test_a_linear_init_run_is_one_row_and_its_phases_keep_their_epochs(tmp_path, capsys):
    _linear_init_run(tmp_path / "li" / "seed1", 1, 70.0)
    _linear_init_run(tmp_path / "li" / "seed2", 2, 72.0)
    assert summarize.main([str(tmp_path / "li")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| digits |")]
    assert rows == ["| digits | EM | - | 2 (1 2) | 71.00 ± 1.41 | 80.00 ± 0.00 | digits_cnn | 24 | clean | linear best of "
                    "2 ep, then patience 1, max 1 ep | - | single positive |"]
    assert summarize.main([str(tmp_path / "li" / "seed1" / "linear")]) == 0  # a phase alone: its own 2 epochs
    assert "| best of 2 ep |" in capsys.readouterr().out


def test_runs_of_another_number_of_processes_are_never_pooled(tmp_path, capsys):
    fake_run(tmp_path / "one" / "seed1", 1, 88.0)
    fake_run(tmp_path / "one" / "seed2", 2, 89.0)
    fake_run(tmp_path / "two" / "seed3", 3, 80.0)
    _record(tmp_path / "two" / "seed3", world_size=2, bsize_global=8, bsize_per_process=4)
    assert summarize.main([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pascal | EM |")]
    assert len(rows) == 2 and any("world_size=2" in row and "1 (3)" in row for row in rows)
