"""`hpo cache`: the image caches, the studies that use them, and removing the unused ones."""

from __future__ import annotations

import json
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from search.cli.main import main
from search.study.caches import list_caches, record_use
from search.study.data import StudyData
from trainer.sources import load_table


def test_a_study_records_the_caches_it_reads(tmp_path: Path):
    table = load_table("builtin:digits")
    data = StudyData(
        table, [], cache_dir=tmp_path / "cache", progress=False, folder=tmp_path / "s1"
    )
    images = data.images(8)
    (entry,) = list_caches(tmp_path / "cache", tmp_path)
    assert entry.path == images.path and entry.used_by == ("s1",)
    assert (entry.source, entry.size, entry.images) == ("builtin:digits", 8, len(table))
    assert entry.bytes >= len(table) * 8 * 8 * 3


def test_hpo_cache_lists_caches_and_clean_removes_only_unused_ones(tmp_path: Path, capsys):
    cache, studies = tmp_path / "cache", tmp_path / "studies"
    cache.mkdir()
    for name in ("used-8px-aaaa.npy", "old-16px-bbbb.npy"):
        np.save(cache / name, np.zeros((4, 2, 2, 3), np.uint8))
    (cache / "used-8px-aaaa.json").write_text(json.dumps({"source": "photos/", "size": 8}))
    (studies / "mine").mkdir(parents=True)
    (studies / "mine" / "caches.json").write_text(json.dumps(["used-8px-aaaa.npy"]))
    common = ["--dir", str(cache), "--studies", str(studies)]

    assert main(["cache", *common]) == 0
    listing = capsys.readouterr().out
    assert "used-8px-aaaa.npy" in listing and "photos/" in listing and "mine" in listing
    assert "old-16px-bbbb.npy" in listing and "(none" in listing

    assert main(["cache", "clean", *common]) == 0
    assert "Removed 1 unused caches" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["used-8px-aaaa.json", "used-8px-aaaa.npy"]


def _unused_cache(cache: Path, name: str) -> Path:
    cache.mkdir(exist_ok=True)
    np.save(cache / name, np.zeros((4, 2, 2, 3), np.uint8))
    return cache / name


def test_clean_leaves_a_cache_that_is_being_built(tmp_path: Path, capsys):
    # Issue 24 item 4: the temporary file of a build in progress matched *.npy and was deleted.
    cache = tmp_path / "cache"
    building = _unused_cache(cache, "photos-8px-aaaa.4242.tmp.npy")
    assert main(["cache", "--dir", str(cache), "--studies", str(tmp_path)]) == 0
    assert "4242.tmp" not in capsys.readouterr().out  # not listed as an unused cache
    assert main(["cache", "clean", "--dir", str(cache), "--studies", str(tmp_path)]) == 0
    assert building.exists()


def test_clean_leaves_a_cache_whose_lock_another_process_holds(tmp_path: Path):
    cache = tmp_path / "cache"
    locked = _unused_cache(cache, "photos-8px-bbbb.npy")
    old = _unused_cache(cache, "photos-16px-cccc.npy")
    with FileLock(locked.with_suffix(".lock")):  # a process is building or checking it
        assert main(["cache", "clean", "--dir", str(cache), "--studies", str(tmp_path)]) == 0
    assert locked.exists() and not old.exists()


def _record_many(folder: Path, caches: list[Path], start: Barrier) -> None:
    start.wait()
    for cache in caches:
        record_use(folder, cache, source="photos/", size=8, images=4)


def test_workers_recording_their_caches_at_once_lose_none(tmp_path: Path):
    # Issue 24 item 4: caches.json was read, changed and rewritten with no lock.
    (tmp_path / "cache").mkdir()
    caches = [[tmp_path / "cache" / f"w{w}-{i}px.npy" for i in range(150)] for w in range(4)]
    for path in (path for mine in caches for path in mine):
        path.touch()
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    workers = [
        context.Process(target=_record_many, args=(tmp_path / "s", mine, start)) for mine in caches
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    recorded = json.loads((tmp_path / "s" / "caches.json").read_text())
    assert len(recorded) == 4 * 150


def test_feature_caches_are_listed_and_cleaned_with_their_image_cache(tmp_path: Path, capsys):
    from trainer.cache import FEATURES_MARK

    cache, studies = tmp_path / "cache", tmp_path / "studies"
    used, old = _unused_cache(cache, "used-8px-aaaa.npy"), _unused_cache(cache, "old-8px-bbbb.npy")
    (cache / "used-8px-aaaa.json").write_text(json.dumps({"source": "photos/", "size": 8}))
    features = []
    for image_cache in (used, old):
        name = f"{image_cache.stem}{FEATURES_MARK}ResNet-0123456789abcdef-plain.npy"
        np.save(cache / name, np.zeros((4, 16), np.float32))
        features.append(cache / name)
    (studies / "mine").mkdir(parents=True)
    (studies / "mine" / "caches.json").write_text(json.dumps([used.name]))

    entries = {e.path: e for e in list_caches(cache, studies)}
    assert entries[features[0]].used_by == ("mine",) and entries[features[0]].kind == "features"
    assert (entries[features[0]].source, entries[features[0]].size) == ("photos/", 8)
    assert entries[features[1]].used_by == () and entries[used].kind == "images"
    common = ["--dir", str(cache), "--studies", str(studies)]
    assert main(["cache", *common]) == 0
    assert "features" in capsys.readouterr().out

    assert main(["cache", "clean", *common]) == 0
    assert "Removed 2 unused caches" in capsys.readouterr().out
    assert used.exists() and features[0].exists()
    assert not old.exists() and not features[1].exists()


def test_the_study_side_names_feature_caches_as_the_trainer_does():
    from search.study import caches
    from trainer import cache

    assert caches.FEATURES_MARK == cache.FEATURES_MARK


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_listing_fits_the_terminal_with_file_names_whole(
    tmp_path: Path, capsys, monkeypatch, columns
):
    cache = tmp_path / "cache"
    cache.mkdir()
    name = "photos-of-the-whole-competition-set-224px-0123456789abcdef.npy"
    source = "/data/competitions/2026/kaggle-plant-pathology/train_images/"
    np.save(cache / name, np.zeros((4, 2, 2, 3), np.uint8))
    (cache / name.replace(".npy", ".json")).write_text(json.dumps({"source": source, "size": 8}))
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["cache", "--dir", str(cache), "--studies", str(tmp_path / "studies")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns
    assert any(name in line for line in lines)
    at = next(i for i, line in enumerate(lines) if name in line)
    if columns == 160:  # room for the table, whole: its top border ends in its corner
        assert next(line for line in lines if "┏" in line).rstrip().endswith("┓")
        assert source[:20] in lines[at]  # the source folded in its column
    else:  # one block per cache, the source wrapped only where it has spaces (none here)
        assert lines[at] == name and source in lines[at + 1]
