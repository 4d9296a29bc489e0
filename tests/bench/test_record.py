"""bench/curves/record.py: fixed configurations, every fold's curve, and a resumable table."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.curves import record

SPACE = """\
from search.space import choice, loguniform

data = "set-by-the-recorder"
image_size = 8
folds = 2
epochs = 2
metric = "accuracy"
augment = "none"
tracking = "none"
threads = 1
backbone = "test_resnet"
batch_size = choice(16, 32)
loss = choice("ce", "focal")
lr = loguniform(1e-3, 1e-2)
"""


def _task(folder: Path) -> record.Task:
    """40 CV and 20 holdout images of two classes (dark and bright squares)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = i % 2
        pixels = rng.integers(0, 100, (8, 8, 3)) + 150 * label
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{folder / f'{i}.png'},{'ab'[label]}")
    csv = folder / "all.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    space = folder / "space.py"
    space.write_text(SPACE)
    return record.Task("tiny", space, csv, 40, 20)


def test_configurations_start_with_every_corner_and_are_fixed(tmp_path: Path) -> None:
    from search.space.spacefile import load_space

    space = load_space(_task(tmp_path).space)
    first = [c for _, c in zip(range(6), record.configurations(space), strict=False)]
    again = [c for _, c in zip(range(6), record.configurations(space), strict=False)]
    assert first == again
    corners = {(c["batch_size"], c["loss"]) for c in first[:4]}
    assert corners == {(16, "ce"), (16, "focal"), (32, "ce"), (32, "focal")}
    assert len({c["lr"] for c in first}) == 6  # Halton points, not one lr repeated


@pytest.mark.slow
def test_a_recording_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    task, table = _task(tmp_path), tmp_path / "tiny.parquet"
    assert record.run(task, table, configs=2, deadline=time.time() + 600) == 2
    first = record.read_table(table)
    assert record.run(task, table, configs=3, deadline=time.time() + 600) == 1
    assert record.run(task, table, configs=3, deadline=time.time() + 600) == 0
    frame = record.read_table(table)
    assert list(frame["config_id"]) == [0, 1, 2]
    assert list(frame["recorded"][:2]) == list(first["recorded"])  # not trained again
    row = frame.iloc[2]
    assert np.array([list(f) for f in row["fold_scores"]]).shape == (2, 2)
    assert np.array([list(f) for f in row["epoch_seconds"]]).shape == (2, 2)
    assert len(row["holdout_scores"]) == 2
    assert row["holdout"] == pytest.approx(np.mean(row["holdout_scores"]))
    assert json.loads(row["config"])["epochs"] == 2
    assert set(json.loads(row["params"])) == {"batch_size", "loss", "lr"}


def test_a_deadline_in_the_past_records_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    task, table = _task(tmp_path), tmp_path / "tiny.parquet"
    assert record.run(task, table, configs=2, deadline=time.time() - 1) == 0
    assert not table.exists()


def test_two_recorders_share_one_table_without_losing_rows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    task, table = _task(tmp_path), tmp_path / "tiny.parquet"
    other = {"host": socket.gethostname(), "pid": os.getppid()}  # a live process: a recorder

    def fake(self, config_id: int, params: dict) -> dict:
        if config_id == 0:  # another recorder claims 1 and finishes 2 while this one trains
            assert record.claim_next(table, 4) == 1
            record._write_claims(table, {"1": other})
            record.append_row(table, {"config_id": 2, "holdout": 0.2, "status": "ok"})
        return {"config_id": config_id, "holdout": 0.1 * config_id, "status": "ok",
                "fold_scores": [[0.5]]}  # fmt: skip

    monkeypatch.setattr(record.Recorder, "record", fake)
    assert record.run(task, table, configs=4, deadline=time.time() + 600) == 2
    assert list(record.read_table(table)["config_id"]) == [0, 2, 3]  # 1 is the other's
    assert record._claims(table) == {"1": other}


def test_a_dead_recorders_claim_is_taken_over(tmp_path: Path) -> None:
    table = tmp_path / "tiny.parquet"
    dead = subprocess.Popen(["true"])
    dead.wait()
    record._write_claims(table, {"0": {"host": socket.gethostname(), "pid": dead.pid}})
    assert record.claim_next(table, 2) == 0
    assert record.claim_next(table, 2) == 1  # this process holds 0 now
    assert record.claim_next(table, 2) is None
    record.release(table, 0)
    assert set(record._claims(table)) == {"1"}


def test_a_failed_configuration_gives_its_claim_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    task, table = _task(tmp_path), tmp_path / "tiny.parquet"

    def fail(self, config_id: int, params: dict) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(record.Recorder, "record", fail)
    with pytest.raises(KeyboardInterrupt):
        record.run(task, table, configs=2, deadline=time.time() + 600)
    assert record._claims(table) == {}


def test_each_recorder_gets_a_work_folder_of_its_own(tmp_path: Path) -> None:
    first = record._workdir(tmp_path, "tiny")
    assert first == tmp_path / "tiny-0"
    code = (
        "import sys; from pathlib import Path; from bench.curves import record; "
        "print(record._workdir(Path(sys.argv[1]), 'tiny').name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
        cwd=Path(record.__file__).parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == "tiny-1"  # this process holds tiny-0
