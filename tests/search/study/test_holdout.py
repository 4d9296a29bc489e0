"""The default holdout: a tenth of data of at least 1,000 images, none (and a note) below."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from search.engine.run import RunRequest, finish, prepare
from search.study.splits import holdout_indices, stored_folds

SPACE = "backbone = 'test_vit'\nimage_size = 32\nfolds = 2\ntracking = 'none'\n"


def _prepare(space: str, *overrides: str) -> tuple[object, str]:
    """Prepare the study, then print what `hpo run` prints at its end (the note goes there)."""
    Path("space.py").write_text(space)
    out = io.StringIO()
    request = RunRequest(space="space.py", overrides=overrides, progress=False, export=False)
    run = prepare(request, Console(file=out, width=400))
    finish(run, "done")
    return run, out.getvalue()


def _small_folder(root: Path, per_class: int = 20) -> str:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return str(root)


def test_data_of_a_thousand_images_or_more_gets_a_tenth_held_out():
    run, printed = _prepare(SPACE)  # builtin:digits, 1,797 images

    held = holdout_indices(stored_folds(run.study))
    assert run.space.settings.holdout == 0.1
    assert run.study.user_attrs["hpo.identity"]["settings"]["holdout"] == 0.1
    assert abs(len(held) - 180) <= 2
    assert "No holdout" not in printed


def test_small_data_gets_no_holdout_and_a_note_saying_the_scores_are_optimistic(tmp_path):
    data = _small_folder(tmp_path / "small")
    run, printed = _prepare(SPACE + f"data = {data!r}\n")

    assert run.space.settings.holdout == 0.0
    assert len(holdout_indices(stored_folds(run.study))) == 0
    flat = " ".join(printed.split())
    assert "No holdout (40 images" in flat and "optimistic" in flat and "holdout = 0.1" in flat


def test_an_explicit_holdout_wins_and_a_study_resumes_with_the_holdout_it_stored():
    run, _ = _prepare(SPACE + "holdout = 0.0\n")
    assert run.space.settings.holdout == 0.0
    before = run.study.user_attrs["hpo.fingerprint"]

    # The same study with the holdout left to the default: it resumes with the stored 0.
    resumed, printed = _prepare(SPACE.replace("holdout = 0.0\n", ""))
    assert resumed.space.settings.holdout == 0.0
    assert resumed.study.user_attrs["hpo.fingerprint"] == before
    assert "No holdout (1797 images" in " ".join(printed.split())
