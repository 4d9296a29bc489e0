"""`hpo cache`: the image caches, the studies that use them, and removing the unused ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from search.cli.main import main
from search.study.caches import list_caches
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
