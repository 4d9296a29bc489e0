"""`hpo predict` on folders and CSVs, its errors, and the MLflow model that must agree with it."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from search.cli.predict import add_parser
from search.export.build import ExportResult
from search.export.mlflow_model import Headline, log_ensemble
from search.export.onnx_model import OnnxCheck
from search.export.predict import PredictInputError
from search.export.publish import log_to_mlflow
from search.export.report import ExportScores, Row, Scores
from search.study.splits import holdout_indices, stored_folds
from trainer.cache import cached_images
from trainer.errors import ConfigError
from trainer.inference.ensemble import Ensemble, ExportError
from trainer.inference.manifest import Manifest
from trainer.sources import load_table

PROBS = [f"prob_{d}" for d in range(10)]


@pytest.fixture(scope="session")
def holdout(digits) -> tuple[np.ndarray, np.ndarray]:
    """The first 12 holdout digits: their 8x8 greyscale pixels and their cached 32 px images."""
    chosen = holdout_indices(stored_folds(digits.study()))[:12]
    table = load_table("builtin:digits")
    cached = cached_images(table, 32, progress=False).images[chosen]
    return table.arrays[chosen, :, :, 0], cached


def _predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hpo")
    add_parser(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["predict", *argv])
    return args.handler(args)


def _digit_folder(root: Path, greys: np.ndarray) -> list[str]:
    """Digits as 8x8 greyscale PNGs in nested folders, plus other modes, sizes and junk."""
    names = []
    for i, grey in enumerate(greys):
        name = f"batch{i % 3}/sub{i % 2}/digit{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(root / name)
        names.append(name)
    big = np.kron(greys[0], np.ones((9, 7), np.uint8))  # 72x56, not square
    extras = {
        "modes/rgba.png": Image.fromarray(np.dstack([big, big, big, np.full_like(big, 200)])),
        "modes/palette.png": Image.fromarray(np.dstack([big] * 3)).quantize(8),
        "modes/sixteen.png": Image.fromarray(big.astype(np.uint16) * 257),
        "modes/photo.jpg": Image.fromarray(np.dstack([big] * 3)),
    }
    for name, image in extras.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    (root / ".hidden.png").write_bytes((root / names[0]).read_bytes())
    (root / "notes.txt").write_text("not an image")
    return names + list(extras)


def test_predict_a_folder_of_nested_images_of_any_size_and_mode(digits, holdout, tmp_path):
    greys, cached = holdout
    names = _digit_folder(tmp_path / "images", greys)

    assert _predict([str(digits.top1), "images", "--out", "out/predictions.csv"]) == 0

    table = pd.read_csv("out/predictions.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "label", *PROBS]
    assert sorted(table["path"]) == sorted(names)
    np.testing.assert_allclose(table[PROBS].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert (table["label"].astype(str) == table[PROBS].to_numpy().argmax(1).astype(str)).all()
    # The files decode to exactly the cached images the members were trained and scored on.
    expected = Ensemble.load(digits.top1, device="cpu").predict(cached)
    digits_rows = table.set_index("path").loc[names[: len(greys)], PROBS].to_numpy()
    np.testing.assert_allclose(digits_rows, expected, atol=1e-5)


def test_predict_a_csv_of_paths_gives_the_same_rows(digits, holdout, tmp_path):
    names = _digit_folder(tmp_path / "images", holdout[0])
    _predict([str(digits.top1), "images", "--out", "folder.csv"])
    paths = [f"images/{n}" for n in names[:5]] + [str(tmp_path / "images" / n) for n in names[5:]]
    pd.DataFrame({"id": range(len(paths)), "Path": paths}).to_csv("list.csv", index=False)

    assert _predict([str(digits.top1), "list.csv", "--out", "csv.csv"]) == 0

    by_folder = pd.read_csv("folder.csv").set_index("path").loc[names, PROBS].to_numpy()
    by_csv = pd.read_csv("csv.csv")
    assert list(by_csv["path"]) == paths
    np.testing.assert_allclose(by_csv[PROBS].to_numpy(), by_folder, atol=1e-7)


def test_unreadable_files_get_an_empty_row_and_a_note(digits, tmp_path, capsys):
    Path("images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("images/ok.png")
    Path("images/broken.png").write_bytes(b"not a png")

    assert _predict([str(digits.top1), "images"]) == 0

    table = pd.read_csv("predictions.csv", keep_default_na=False).set_index("path")
    assert table.loc["broken.png", "label"] == "" and table.loc["ok.png", "label"] != ""
    assert "1 of 2 files could not be read" in capsys.readouterr().err


def test_tta_flag_is_deterministic_and_changes_predictions(digits, holdout, tmp_path):
    _digit_folder(tmp_path / "images", holdout[0])
    _predict([str(digits.top1), "images", "--out", "plain.csv"])
    _predict([str(digits.top1), "images", "--out", "tta1.csv", "--tta"])
    _predict([str(digits.top1), "images", "--out", "tta2.csv", "--tta", "hflip"])

    plain, tta1, tta2 = (
        pd.read_csv(f)[PROBS].to_numpy() for f in ("plain.csv", "tta1.csv", "tta2.csv")
    )
    np.testing.assert_array_equal(tta1, tta2)  # --tta alone: hflip, as the export has none
    assert np.abs(tta1 - plain).max() > 1e-4


@pytest.mark.parametrize(
    ("setup", "argv", "error", "words"),
    [
        (None, ["missing-export", "images"], ExportError, "does not exist"),
        ("no-manifest", ["export", "images"], ExportError, "has no manifest.json"),
        ("bad-manifest", ["export", "images"], ExportError, "not a valid hpo manifest"),
        (None, ["EXPORT", "empty"], PredictInputError, "holds no images"),
        (None, ["EXPORT", "no-path.csv"], PredictInputError, "has no path column"),
        (None, ["EXPORT", "nowhere"], PredictInputError, "does not exist"),
        (None, ["EXPORT", "images", "--tta", "sideways"], ConfigError, "is not one of"),
    ],
)
def test_user_errors_are_one_clear_sentence(digits, setup, argv, error, words):
    Path("images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("images/ok.png")
    Path("empty").mkdir()
    Path("no-path.csv").write_text("file,label\na.png,1\n")
    if setup:
        shutil.copytree(digits.top1, "export")
        if setup == "no-manifest":
            Path("export/manifest.json").unlink()
        else:
            Path("export/manifest.json").write_text('{"classes": ["0", "1"], "members": [{}]}')
    argv = [str(digits.top1) if a == "EXPORT" else a for a in argv]
    with pytest.raises(error, match=words) as caught:
        _predict(argv)
    assert str(caught.value).count("; ") >= 1 and "\n" not in str(caught.value)


def test_the_mlflow_model_predicts_what_hpo_predict_writes(digits, holdout, tmp_path):
    greys, cached = holdout
    names = _digit_folder(tmp_path / "images", greys)
    _predict([str(digits.top1), "images", "--out", "predictions.csv"])
    written = pd.read_csv("predictions.csv", keep_default_na=False)
    mlflow.set_experiment("digits")
    with mlflow.start_run() as study_run:
        study_id = study_run.info.run_id

    logged = log_ensemble(
        digits.top1, study_name="digits", run_id=study_id, metrics={"export_cv_f1_macro": 0.5}
    )
    uri = logged.uri

    assert uri == "models:/digits/1" and not logged.champion  # no headline: never the champion
    client = mlflow.MlflowClient()
    assert client.get_model_version("digits", "1").run_id == study_id
    assert client.get_run(study_id).info.status == "FINISHED"  # restored after logging
    model = mlflow.pyfunc.load_model(uri)
    files = [str(tmp_path / "images" / n) for n in written["path"]]
    by_path = model.predict(pd.DataFrame({"path": files}))
    np.testing.assert_allclose(by_path[PROBS].to_numpy(), written[PROBS].to_numpy(), atol=1e-6)
    assert len(written) == len(names)
    assert list(by_path["label"]) == list(written["label"].astype(str))
    by_array = model.predict(cached)
    expected = Ensemble.load(digits.top1, device="cpu").predict(cached)
    np.testing.assert_allclose(by_array[PROBS].to_numpy(), expected, atol=1e-6)
    with_tta = model.predict(cached, params={"tta": "hflip"})
    assert np.abs(with_tta[PROBS].to_numpy() - expected).max() > 1e-4


def test_without_a_study_run_the_model_goes_to_one_export_run_of_the_study(digits):
    uris = [log_ensemble(digits.top1, study_name="other-study").uri for _ in range(2)]

    assert uris == ["models:/other-study/1", "models:/other-study/2"]
    client = mlflow.MlflowClient()
    runs = {client.get_model_version("other-study", v).run_id for v in ("1", "2")}
    assert len(runs) == 1
    run = mlflow.get_run(runs.pop())
    assert mlflow.get_experiment(run.info.experiment_id).name == "other-study"
    assert run.data.tags["hpo.role"] == "export" and run.info.status == "FINISHED"


def test_the_verbs_add_their_parsers_without_importing_the_trainer():
    # `hpo --help` and `hpo status` build every verb's parser; that must stay fast.
    code = (
        "import argparse, sys\n"
        "from search.cli import export, predict\n"
        "verbs = argparse.ArgumentParser().add_subparsers()\n"
        "export.add_parser(verbs); predict.add_parser(verbs)\n"
        "heavy = [m for m in ('torch', 'optuna', 'mlflow', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_champion_alias_moves_only_to_a_better_headline(digits):
    client = mlflow.MlflowClient()

    def log(value: float, metric: str = "f1_macro") -> bool:
        headline = Headline(metric, "holdout", value)
        return log_ensemble(digits.top1, study_name="champ", headline=headline).champion

    assert log(0.80)  # the first version is the champion
    assert not log(0.70) and not log(0.80)  # worse, then a tie: the champion stays
    assert str(client.get_model_version_by_alias("champ", "champion").version) == "1"
    assert log(0.90)
    champion = client.get_model_version_by_alias("champ", "champion")
    assert str(champion.version) == "4" and champion.tags["hpo.score"] == "0.9"
    assert champion.tags["hpo.score_kind"] == "holdout"
    assert champion.tags["hpo.metric"] == "f1_macro"
    assert log(0.5, metric="accuracy")  # another metric cannot be compared: the new one wins
    loaded = mlflow.pyfunc.load_model("models:/champ@champion")
    assert loaded.metadata.run_id == client.get_model_version("champ", "5").run_id


def _export_scored(folder: Path, cv: float, holdout: float) -> ExportResult:
    """An export of ``folder`` whose out-of-fold and holdout F1 are ``cv`` and ``holdout``."""
    row = Row("selection", Scores(cv, cv, 0.3), Scores(holdout, holdout, 0.3), None)
    scores = ExportScores(
        "oof", "f1_macro", "select", (0,), (cv,), (1,), (row,), 900, 100, "none", "hflip"
    )
    folder.mkdir(exist_ok=True)
    (folder / "report.md").write_text(f"# Export (CV {cv}, holdout {holdout})\n")
    manifest = Manifest(("a", "b"), ())
    return ExportResult(folder, "oof", (0,), ("trial0-fold0",), scores, manifest, OnnxCheck(1, 0))


def test_the_champion_is_chosen_on_the_out_of_fold_score_and_the_holdout_is_a_report(tmp_path):
    # Issue 24 item 11: chosen on the holdout export after export, @champion's holdout score
    # was optimistic, and export/ on disk and @champion could be different models.
    study, client = optuna.create_study(direction="maximize"), mlflow.MlflowClient()
    out = io.StringIO()
    console = Console(file=out, width=400)

    export = tmp_path / "export"
    first = log_to_mlflow(_export_scored(export, cv=0.90, holdout=0.80), study, console)
    assert first.champion
    said = " ".join(out.getvalue().split())
    assert "out-of-fold f1_macro 0.9000" in said and "holdout 0.8000" in said
    assert "not used to choose" in said

    second = log_to_mlflow(_export_scored(export, cv=0.85, holdout=0.95), study, console)
    assert not second.champion  # a better holdout does not make it the champion
    champion = client.get_model_version_by_alias("oof", "champion")
    assert str(champion.version) == "1" and champion.tags["hpo.score"] == "0.9"
    assert champion.tags["hpo.score_kind"] == "CV (optimistic)"
    assert champion.tags["hpo.holdout_score"] == "0.8"
    said = " ".join(out.getvalue().split())
    assert f"{export} holds this version, not the champion" in said


def test_the_mlflow_model_ships_only_trainer_and_loads_without_search(digits, holdout, tmp_path):
    uri = log_ensemble(digits.top1, study_name="lean").uri
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    assert sorted(p.name for p in (local / "code").iterdir()) == ["trainer"]
    np.save(tmp_path / "images.npy", holdout[1])
    code = f"""
import sys
import mlflow
import numpy as np
model = mlflow.pyfunc.load_model({str(local)!r})
frame = model.predict(np.load({str(tmp_path / "images.npy")!r}))
assert len(frame) == 12 and frame.columns[0] == "label"
loaded = sorted(m for m in sys.modules if m == "search" or m.startswith("search."))
assert not loaded, loaded
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_predict_with_onnx_matches_pytorch_and_never_imports_torch(digits, holdout, tmp_path):
    greys, _ = holdout
    names = _digit_folder(tmp_path / "images", greys)
    Path("images/broken.png").write_bytes(b"not a png")
    _predict([str(digits.top1), "images", "--out", "torch.csv"])
    code = f"""
import sys
from search.cli.main import main
code = main(["predict", {str(digits.top1)!r}, "images", "--onnx", "--out", "onnx.csv"])
assert code == 0, code
assert "torch" not in sys.modules, "the --onnx path imported torch"
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 of" in done.stderr and "could not be read" in done.stderr
    by_torch = pd.read_csv("torch.csv", keep_default_na=False).set_index("path")
    by_onnx = pd.read_csv("onnx.csv", keep_default_na=False).set_index("path")
    assert sorted(by_onnx.index) == sorted([*names, "broken.png"])
    assert by_onnx.loc["broken.png", "label"] == ""
    rows = by_torch.loc[names, PROBS].to_numpy(dtype=float)
    assert np.abs(by_onnx.loc[names, PROBS].to_numpy(dtype=float) - rows).max() <= 1e-4
    assert list(by_onnx.loc[names, "label"]) == list(by_torch.loc[names, "label"])


def test_onnx_predictions_cannot_take_a_tta_flag(digits):
    Path("images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("images/ok.png")
    with pytest.raises(PredictInputError, match="part of the graph; drop --tta"):
        _predict([str(digits.top1), "images", "--onnx", "--tta", "hflip"])
