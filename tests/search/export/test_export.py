"""Export: a real (tiny) study on digits, its checkpoints, ensemble scores and export folder."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from search.cli.export import add_parser
from search.context import RunRequest
from search.engine.run import prepare
from search.export.candidates import NothingToExport
from search.export.checkpoints import load_oof, top_trials
from search.export.entry_points import export_from_storage
from search.export.report import Scores, flat_metrics, measure
from search.export.selection import combine, select
from search.export.study_source import stored_settings
from search.space.spacefile import load_space
from search.study.folder import trial_dir
from search.study.splits import holdout_indices, stored_folds
from search.study.storage import StudyError
from tests.support.export_study import OVERRIDES, SPACE, DigitsStudy
from trainer.cache import cached_images
from trainer.inference.ensemble import Ensemble
from trainer.sources import load_table


def test_only_the_top_k_trials_keep_checkpoints(digits):
    study = digits.study()
    kept = sorted(int(p.name) for p in (digits.folder / "trials").iterdir())
    assert len(study.trials) == 3
    assert kept == sorted(t.number for t in top_trials(study, 2))


def test_export_folder_has_manifest_weights_space_and_report(digits):
    manifest = json.loads((digits.top1 / "manifest.json").read_text())
    best = top_trials(digits.study(), 1)[0]

    assert manifest["classes"] == [str(d) for d in range(10)]
    assert manifest["backbone"] == "test_vit" and manifest["image_size"] == 32
    assert manifest["mean"] == [0.5, 0.5, 0.5] and manifest["tta"] == "none"
    assert [m["name"] for m in manifest["members"]] == [
        f"trial{best.number}-fold{k}" for k in (0, 1)
    ]
    assert all((digits.top1 / m["weights"]).is_file() for m in manifest["members"])
    assert all(m["config"] == best.user_attrs["config"] for m in manifest["members"])
    assert all(m["weight"] == 0.5 for m in manifest["members"])
    assert manifest["ensemble"] == {"mode": "select", "candidates": [best.number], "counts": [1]}
    report = (digits.top1 / "report.md").read_text()
    assert "Headline: f1_macro" in report and "on the holdout (360 images" in report
    assert "| selection |" in report
    assert f"| best fold model on the holdout (trial{best.number}" in report
    assert "f1_macro CV (optimistic)" in report and "f1_macro +hflip" in report
    assert (digits.top1 / "ensemble.onnx").is_file() and "onnxruntime checked" in report
    assert "on 64 holdout images at each member size" in report  # real images, not random
    # The study's plots are in the export, linked from the report.
    linked = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert "## The search" in report and "figures/optimization_history.png" in linked
    assert all((digits.top1 / path).stat().st_size > 1000 for path in linked)


def test_best_space_is_a_space_file_with_every_value_fixed(digits):
    best = top_trials(digits.study(), 1)[0]
    space = load_space(digits.top1 / "best_space.py")
    assert not space.searched
    assert space.config({}).to_dict() == best.user_attrs["config"]
    assert space.settings.folds == 2 and space.settings.holdout == 0.2
    assert space.settings.data == "builtin:digits" and space.settings.trials == 1


def test_reloaded_in_a_fresh_process_the_export_reproduces_stored_probabilities(digits):
    # Each member, given the cached images of its validation fold, must give back the
    # out-of-fold probabilities saved during training.
    code = f"""
import sys
import numpy as np
import optuna
from trainer.cache import cached_images
from trainer.inference.ensemble import Ensemble, Manifest
from trainer.sources import load_table
from search.export.checkpoints import load_oof
from search.study.folder import trial_dir

ensemble = Ensemble.load({str(digits.top1)!r}, device="cpu")
specs = Manifest.read({str(digits.top1)!r}).members
images = cached_images(load_table("builtin:digits"), 32, progress=False).images
worst = 0.0
for i, spec in enumerate(specs):
    indices, _, stored = load_oof(trial_dir({str(digits.folder)!r}, spec.trial), spec.fold)
    probs = ensemble.member_probs(images[indices], tta="none")[i]
    worst = max(worst, float(np.abs(probs - stored).max()))
assert "mlflow" not in sys.modules, "loading an export must not need MLflow"
print(worst)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=digits.root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5


def _stored_oof(digits: DigitsStudy, number: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [load_oof(trial_dir(digits.folder, number), fold) for fold in (0, 1)]
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])[order]
    return labels, np.concatenate([p[2] for p in parts])[order]


def test_selection_over_the_top_trials_is_weighted_by_its_counts(digits, monkeypatch):
    monkeypatch.chdir(digits.root)
    result = export_from_storage("digits", top_k=2, mlflow=False)

    numbers = [t.number for t in top_trials(digits.study(), 2)]
    labels, first = _stored_oof(digits, numbers[0])
    _, second = _stored_oof(digits, numbers[1])
    expected = select([first, second], labels, "f1_macro")
    scores = result.scores
    assert scores.candidates == tuple(numbers) and scores.counts == expected.counts
    assert scores.rows[0].model == "selection"
    assert scores.rows[0].cv == measure(labels, combine([first, second], expected.weights))
    assert len(labels) == scores.cv_size == np.sum(stored_folds(digits.study()) >= 0)
    manifest = json.loads((result.folder / "manifest.json").read_text())
    for member in manifest["members"]:
        share = expected.weights[numbers.index(member["trial"])] / 2
        assert member["weight"] == pytest.approx(share)
    # Caruana's first pick is the best single trial: never worse than it on these predictions.
    assert scores.rows[0].cv.f1_macro >= measure(labels, first).f1_macro
    assert "cv_optimistic" in " ".join(flat_metrics(scores)) and all(
        "cv_optimistic" in k or "holdout" in k for k in flat_metrics(scores)
    )


def _same(got: Scores, expected: Scores) -> None:
    # The export's vote is summed in float32, the report's in float64.
    assert (got.accuracy, got.f1_macro) == (expected.accuracy, expected.f1_macro)
    assert got.log_loss == pytest.approx(expected.log_loss, rel=1e-6)


def test_holdout_rows_score_the_export_its_trials_and_the_best_fold_model(digits, monkeypatch):
    monkeypatch.chdir(digits.root)
    result = export_from_storage("digits", top_k=2, tta="flip4", mlflow=False)
    scores = result.scores

    holdout = holdout_indices(stored_folds(digits.study()))
    assert scores.holdout_size == len(holdout) == 360 and scores.tta_compared == "flip4"
    best = top_trials(digits.study(), 1)[0].number
    names = [row.model for row in scores.rows]
    assert names[0] == "selection" and names[-1].startswith("best fold model on the holdout")
    assert f"trial {best} soft voting (best trial)" in names
    table = load_table("builtin:digits")
    images = cached_images(table, 32, progress=False).images[holdout]
    labels = table.labels[holdout]
    ensemble = Ensemble.load(result.folder, device="cpu")
    export = scores.rows[0]
    _same(export.plain, measure(labels, ensemble.predict(images, tta="none")))
    _same(export.tta, measure(labels, ensemble.predict(images)))
    assert scores.headline() == ("holdout", export.tta.f1_macro)  # the export's own TTA
    probs = ensemble.member_probs(images, tta="none")
    members = [m.name for m in ensemble.members]
    fold_scores = [measure(labels, p).f1_macro for p in probs]
    assert scores.rows[-1].plain.f1_macro >= max(fold_scores)  # the best of all scored folds
    flat = flat_metrics(scores)
    assert flat["export_headline_holdout_f1_macro"] == export.tta.f1_macro
    assert flat["export_export_holdout_f1_macro"] == export.plain.f1_macro
    assert len(members) == 2 * len(scores.trials)
    assert json.loads((result.folder / "manifest.json").read_text())["tta"] == "flip4"


def test_best_mode_exports_the_best_trial_alone(digits, monkeypatch):
    monkeypatch.chdir(digits.root)
    result = export_from_storage("digits", top_k=2, ensemble="best", mlflow=False)

    best = top_trials(digits.study(), 1)[0].number
    assert result.trials == (best,) and result.scores.counts == (1,)
    assert result.scores.rows[0].model == f"trial {best} soft voting"
    assert len(result.scores.rows) == 2


def test_the_onnx_file_gives_the_pytorch_ensembles_probabilities(digits, monkeypatch):
    import onnx
    import onnxruntime as ort

    monkeypatch.chdir(digits.root)
    result = export_from_storage("digits", top_k=2, tta="flip4", mlflow=False)

    path = result.folder / "ensemble.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert meta["metric"] == "f1_macro" and meta["image_size"] == "32" and meta["tta"] == "flip4"
    holdout = holdout_indices(stored_folds(digits.study()))[:64]
    images = cached_images(load_table("builtin:digits"), 32, progress=False).images[holdout]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    got = session.run(None, {name: images})[0]
    expected = Ensemble.load(result.folder, device="cpu").predict(images)
    assert got.shape == (64, 10)
    assert np.abs(got - expected).max() <= 1e-4
    assert result.onnx.largest_difference <= 1e-4


def test_a_new_export_keeps_the_one_it_replaces_in_export_prev(digits, monkeypatch):
    # Issue 24 item 3: with tracking=none the replaced export was the only copy.
    monkeypatch.chdir(digits.root)
    replaced = (digits.folder / "export" / "manifest.json").read_text()
    out = io.StringIO()
    export_from_storage(
        "digits", top_k=2, ensemble="best", mlflow=False, console=Console(file=out, width=300)
    )
    previous = digits.folder / "export.prev"
    assert (previous / "manifest.json").read_text() == replaced
    assert (previous / "ensemble.onnx").is_file()
    assert f"The export it replaced is kept in {previous}" in out.getvalue()


def test_asking_for_more_trials_than_were_kept_is_a_clear_error(digits, monkeypatch):
    monkeypatch.chdir(digits.root)
    with pytest.raises(NothingToExport, match=r"Only the 2 best trials .* --top-k 2"):
        export_from_storage("digits", top_k=3, mlflow=False)


def _handler(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hpo")
    add_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_exporting_a_study_without_a_complete_trial_is_a_clear_error():
    Path("empty.py").write_text(SPACE)
    prepare(RunRequest(space="empty.py", overrides=OVERRIDES, progress=False))
    with pytest.raises(NothingToExport) as caught:
        _handler(["export", "empty", "--no-mlflow"])
    message = str(caught.value)
    assert message.count(". ") == 0 and "no complete trial" in message and "hpo run" in message
    assert not Path("studies/empty/export").exists()


def test_hpo_export_links_the_study_plots_in_its_report(digits, monkeypatch):
    monkeypatch.chdir(digits.root)
    assert _handler(["export", "digits", "--ensemble", "best", "--no-mlflow"]) == 0
    report = (digits.folder / "export" / "report.md").read_text()
    linked = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert "figures/optimization_history.png" in linked
    assert all((digits.folder / "export" / path).is_file() for path in linked)


def test_exporting_an_unknown_study_is_a_clear_error():
    with pytest.raises(StudyError, match="No study storage"):
        _handler(["export", "nothing-here"])


def test_settings_are_read_from_storage_without_running_the_space_file():
    Path("stored.py").write_text(SPACE + "top_k = 3\ntracking = 'none'\n")
    request = RunRequest(space="stored.py", overrides=["folds=3", "holdout=0.1"], progress=False)
    study = prepare(request).study

    settings = stored_settings(study)

    assert settings.top_k == 3 and settings.tracking == "none"
    assert settings.folds == 3 and settings.holdout == 0.1  # command-line overrides
    assert settings.data == "builtin:digits"
    study.set_user_attr("hpo.run_control", {"top_k": 5})  # the last run's values, when stored
    assert stored_settings(study).top_k == 5


def test_the_exports_errors_share_one_base():
    from search.export.onnx_model import OnnxExportError
    from trainer.errors import ExportError, UserError
    from trainer.inference.ensemble import ExportError as LoadError

    assert LoadError is ExportError and issubclass(ExportError, UserError)
    assert issubclass(NothingToExport, ExportError) and issubclass(OnnxExportError, ExportError)
