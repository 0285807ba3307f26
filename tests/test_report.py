"""scripts/summarize.py's report: the table in each format (LaTeX checked as text), the two figures, and
what one row is (a linear_init run, runs of another number of processes)."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import summarize  # scripts/, on pytest's pythonpath
from PIL import Image
from test_seed_sweeps import fake_run


def _record(folder: Path, **fields) -> None:
    """Fields of results.json that fake_run leaves at their defaults (what main.py records beside the config)."""
    path = folder / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _curve(val: list[float], test: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "val_map": v, "test_map": t} for i, (v, t) in enumerate(zip(val, test))]


def _grid(root: Path, shift: float = 0.0) -> Path:
    """pascal: EM 88 / 89, an 85 / 86.5, EM_APL 80 (1 seed); coco: EM 70 / 72.5, an 75 (1 seed);
    `shift` moves every mAP."""
    for name, seed, test, extra in (("em1", 1, 88.0, {}), ("em2", 2, 89.0, {}), ("an1", 1, 85.0, {"loss": "an"}),
                                    ("an2", 2, 86.5, {"loss": "an"}), ("apl", 1, 80.0, {"loss": "EM_APL"}),
                                    ("c_em1", 1, 70.0, {"dataset": "coco"}), ("c_em2", 2, 72.5, {"dataset": "coco"}),
                                    ("c_an", 1, 75.0, {"dataset": "coco", "loss": "an"})):
        fake_run(root / name, seed, test + shift, **extra)
        _record(root / name, epochs=_curve([50 + shift, 70, 80], [40, 60 + shift, test + shift]))
    return root


def test_latex_is_a_booktabs_table_methods_by_datasets_best_in_bold(tmp_path, capsys):
    assert summarize.main([str(_grid(tmp_path / "grid")), "--format", "latex"]) == 0
    lines = capsys.readouterr().out.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert lines[0].startswith("%") and r"\usepackage{booktabs}" in lines[0]
    assert lines[1:4] == [r"\begin{tabular}{lcc}", r"\toprule", r"Method & coco & pascal \\"]
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert body == [r"EM & $71.25 \pm 1.77$ & $\mathbf{88.50 \pm 0.71}$ \\",
                    r"an & $\mathbf{75.00}$ & $85.75 \pm 1.06$ \\",
                    r"EM\_APL & -- & $80.00$ \\"]
    for line in lines[1:]:  # it compiles as LaTeX would read it: balanced braces and math, no bare _ or ±
        assert line.count("{") == line.count("}") and line.count("$") % 2 == 0 and "±" not in line
        assert not re.search(r"(?<!\\)_", line), line


def test_text_and_csv_formats(tmp_path, capsys):
    grid = _grid(tmp_path / "grid")
    assert summarize.main([str(grid), "--format", "text"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    column = header.index("test mAP")
    assert header.startswith("dataset  loss") and len(rows) == 5
    assert [row[column:column + 12] for row in rows] == ["71.25 ± 1.77", "75.00 (1 see", "88.50 ± 0.71",
                                                         "80.00 (1 see", "85.75 ± 1.06"]
    assert summarize.main([str(grid), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["dataset"], r["loss"], r["n"], r["test_map_mean"]) for r in table] == [
        ("coco", "EM", "2", "71.2500"), ("coco", "an", "1", "75.0000"), ("pascal", "EM", "2", "88.5000"),
        ("pascal", "EM_APL", "1", "80.0000"), ("pascal", "an", "2", "85.7500")]


def test_plots_are_pngs_of_their_size_drawn_from_the_grid(tmp_path):
    pixels = []
    for name, shift in (("a", 0.0), ("b", -20.0)):
        grid = _grid(tmp_path / name, shift)
        bars, curves = tmp_path / f"{name}_bars.png", tmp_path / f"{name}_curves.png"
        assert summarize.main([str(grid), "--plot", str(bars), "--curves", str(curves)]) == 0
        assert Image.open(bars).format == "PNG" and Image.open(bars).size == (1000, 500)
        assert Image.open(curves).size == (1000, 2 * 360)  # a row of panels per dataset
        pixels.append([np.asarray(Image.open(path).convert("RGB")) for path in (bars, curves)])
    assert not np.array_equal(pixels[0][0], pixels[1][0]) and not np.array_equal(pixels[0][1], pixels[1][1])
    assert summarize.main([str(tmp_path / "a"), "--plot", str(tmp_path / "bars.jpg")]) == 2  # PNG only


def _linear_init_run(run: Path, seed: int, test_map: float) -> None:
    """The three results.json files of a linear_init run (`--linear-epochs 2 --epochs 1`), as modes/linear.py
    writes them."""
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
    assert rows == ["| digits | EM | - | 2 (1 2) | 71.00 ± 1.41 | 80.00 ± 0.00 | digits_cnn | 24 | clean | "
                    "linear best of 2 ep, then patience 1, max 1 ep | - | single positive |"]
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
