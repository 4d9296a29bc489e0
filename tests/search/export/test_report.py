"""What an export says about its scores: the headline, the table, and MLflow keys."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console

from search.export.report import CV, ExportScores, Row, Scores, flat_metrics, markdown, show
from search.export.scoring import compared_tta
from trainer.inference.manifest import Manifest, MemberSpec

GOOD, FAIR, WEAK = Scores(0.9, 0.88, 0.3), Scores(0.8, 0.79, 0.5), Scores(0.7, 0.69, 0.7)


def _scores(*, holdout: bool) -> ExportScores:
    def row(name: str, key: str, cv: Scores, plain: Scores) -> Row:
        return Row(name, cv, plain if holdout else None, plain if holdout else None, key=key)

    return ExportScores(
        study="s",
        metric="f1_macro",
        mode="select",
        candidates=(4, 2),
        values=(0.85, 0.8),
        counts=(3, 1),
        rows=(
            row("selection", "export", GOOD, FAIR),
            row("trial 4 soft voting (best trial)", "trial4", FAIR, WEAK),
            row("best fold model on the holdout (trial4-fold0)", "best_fold_model", WEAK, FAIR),
        ),
        cv_size=900,
        holdout_size=100 if holdout else 0,
        tta="none",
        tta_compared="hflip",
    )


def _manifest() -> Manifest:
    spec = MemberSpec(
        "trial4-fold0",
        "m.safetensors",
        {"backbone": "test_vit", "image_size": 32},
        (0.5,) * 3,
        (0.5,) * 3,
        "",
    )
    return Manifest(("a", "b"), (spec,))


def test_with_a_holdout_the_headline_is_the_holdout_score():
    scores = _scores(holdout=True)
    assert scores.headline() == ("holdout", FAIR.f1_macro)
    assert scores.weights == {4: 0.75, 2: 0.25} and scores.trials == (4, 2)
    verdict = scores.verdict()
    assert "beats trial 4 soft voting (best trial) (0.6900)" in verdict
    assert "equals best fold model" in verdict
    flat = flat_metrics(scores)
    assert flat["export_headline_holdout_f1_macro"] == FAIR.f1_macro
    assert flat["export_export_cv_optimistic_f1_macro"] == GOOD.f1_macro
    assert flat["export_trial4_holdout_tta_accuracy"] == WEAK.accuracy


def test_without_a_holdout_every_score_says_it_is_optimistic():
    scores = _scores(holdout=False)
    out = io.StringIO()

    show(scores, Console(file=out, width=300), folder=".", manifest=_manifest())
    text = markdown(scores, _manifest(), onnx_check="checked.")

    assert scores.headline() == (CV, GOOD.f1_macro) and scores.verdict() is None
    printed = out.getvalue()
    assert f"Headline: f1_macro 0.8800, {CV}" in printed and "biased upwards" in printed
    assert "holdout" not in printed.split("Scores of the export")[1].splitlines()[2]
    assert f"| model | f1_macro {CV} |" in text and "No holdout" in text
    assert set(flat_metrics(scores)) == {
        "export_headline_cv_optimistic_f1_macro",
        *(
            f"export_{k}_cv_optimistic_{m}"
            for k in ("export", "trial4", "best_fold_model")
            for m in ("accuracy", "f1_macro", "log_loss")
        ),
    }


def test_a_space_without_flips_gets_no_flipped_columns():
    # hflip=False (digits, text): a mirrored image means something else, so +hflip columns
    # would score a view the models never learnt (log loss 7x worse on digits).
    scores = replace(_scores(holdout=True), tta_compared=compared_tta("none", [{"hflip": False}]))
    out = io.StringIO()

    show(scores, Console(file=out, width=300), folder=".", manifest=_manifest())
    text = markdown(scores, _manifest(), onnx_check="checked.")

    assert scores.tta_compared == "none"
    assert "+" not in out.getvalue().split("Scores of the export")[1].splitlines()[2]
    assert "| f1_macro holdout |" in text and "+none" not in text and "+hflip" not in text
    assert "without test-time augmentation" in text
    assert not any("holdout_tta" in key for key in flat_metrics(scores))


def test_the_compared_tta_is_the_exports_or_hflip_where_every_member_may_flip():
    assert compared_tta("none", [{"hflip": True}, {"hflip": True}]) == "hflip"
    assert compared_tta("none", [{"hflip": True}, {"hflip": False}]) == "none"
    assert compared_tta("flip4", [{"hflip": True}]) == "flip4"
    assert compared_tta("none", [{}]) == "hflip"  # TrainConfig's default allows flips


def test_the_printed_scores_fit_80_columns_one_line_per_model():
    scores = _scores(holdout=True)
    out = io.StringIO()

    show(scores, Console(file=out, width=80), folder=".", manifest=_manifest())

    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if line.lstrip("│ ").startswith("trial 4 soft voting"))
    assert "0.7900" in row and "0.6900" in row  # its CV and holdout f1_macro on its own line
    assert "f1_macro" in out.getvalue() and "report.md" in out.getvalue()
    wide = io.StringIO()
    show(scores, Console(file=wide, width=300), folder=".", manifest=_manifest())
    assert "log_loss holdout" in wide.getvalue()  # room for every metric: all are shown
