"""The `hpo data` report: counts, sizes, modes, groups, unreadable files and warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.images import decode_image
from trainer.sources import load_table
from trainer.summary import DataSummary, read_header, summarize


def _summary(**changes: object) -> DataSummary:
    fields: dict = dict(
        source="data",
        n_images=60,
        classes=("a", "b"),
        class_counts={"a": 30, "b": 30},
        n_groups=None,
        widths=(10, 20, 30),
        heights=(10, 20, 30),
        modes={"RGB": 60},
        unreadable=(),
    )
    return DataSummary(**{**fields, **changes})


def test_folder_counts_sizes_and_modes(image_folder: Path) -> None:
    summary = summarize(load_table(image_folder))

    assert summary.source == str(image_folder)
    assert summary.n_images == 24
    assert summary.classes == ("bird", "cat", "dog")
    assert summary.class_counts == {"bird": 8, "cat": 8, "dog": 8}
    assert summary.n_groups is None
    assert summary.widths == (32, 46, 60)  # widths 32..60 by 4, per class
    assert summary.heights == (36, 50, 64)
    assert summary.modes == {"RGB": 15, "L": 3, "P": 3, "RGBA": 3}
    assert summary.unreadable == ()


def test_csv_groups_counted(image_csv: Path) -> None:
    summary = summarize(load_table(image_csv))

    assert summary.n_groups == 12
    assert summary.class_counts == {"1": 8, "2": 8, "10": 8}
    assert summary.widths == (40, 40, 40) and summary.heights == (32, 32, 32)
    assert "24 images in 3 classes, 12 groups" in summary.to_text()


def test_unreadable_files_are_listed_not_raised(image_folder: Path) -> None:
    (image_folder / "cat" / "empty.png").write_bytes(b"")
    (image_folder / "dog" / "text.jpg").write_text("no pixels here")
    good = (image_folder / "bird" / "bird_0.png").read_bytes()
    (image_folder / "bird" / "cut.png").write_bytes(good[: len(good) // 2])

    summary = summarize(load_table(image_folder), n_jobs=1)

    assert summary.n_images == 27 and sum(summary.modes.values()) == 24
    assert [path for path, _ in summary.unreadable] == [
        "bird/cut.png",
        "cat/empty.png",
        "dog/text.jpg",
    ]
    assert dict(summary.unreadable)["cat/empty.png"] == "the file is empty"
    assert dict(summary.unreadable)["dog/text.jpg"] == "not a recognised image format"
    text = summary.to_text()
    assert "Unreadable: 3 files (remove or replace them):" in text
    assert "  cat/empty.png: the file is empty" in text


def test_parallel_summary_matches_serial(image_folder: Path) -> None:
    table = load_table(image_folder)

    assert summarize(table, n_jobs=2) == summarize(table, n_jobs=1)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_exif_rotated_image_reports_displayed_size(tmp_path: Path, suffix: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"phone{suffix}"
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, 30:] = 255
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    assert read_header(path) == (20, 60, "RGB")
    upright = decode_image(path, 30)
    assert upright[2, 15].max() < 40 and upright[27, 15].min() > 215  # black on top


def test_builtin_digits_summary() -> None:
    summary = summarize(load_table("builtin:digits"))

    assert summary.n_images == 1797 and sum(summary.class_counts.values()) == 1797
    assert summary.class_counts["0"] == 178
    assert summary.widths is None and summary.heights is None
    assert summary.modes == {"RGB": 1797}
    assert "Width" not in summary.to_text()


def test_text_report_layout(image_folder: Path) -> None:
    text = summarize(load_table(image_folder)).to_text()
    lines = text.splitlines()

    assert lines[0] == f"Data: {image_folder}"
    assert lines[1] == "24 images in 3 classes"
    assert lines[2].split() == ["bird", "8", "33.3%", "#" * 30]
    assert "Width:  32 / 46 / 60 px (min / median / max)" in lines
    assert "Modes:  RGB 15, L 3, P 3, RGBA 3" in lines
    assert "Unreadable: none" in lines
    assert "Warning" not in text


def test_bars_scale_with_the_largest_class() -> None:
    text = _summary(class_counts={"a": 40, "b": 20}).to_text()

    assert "  a       40   66.7%  " + "#" * 30 in text
    assert "  b       20   33.3%  " + "#" * 15 in text


def test_warns_about_tiny_classes() -> None:
    summary = _summary(classes=("a", "b", "c"), class_counts={"a": 3, "b": 4, "c": 8})

    (warning,) = summary.warnings()
    assert warning.startswith("classes 'a' (3), 'b' (4) have fewer than 5 images")
    assert f"Warning: {warning}" in summary.to_text()


def test_warns_about_imbalance() -> None:
    summary = _summary(class_counts={"a": 200, "b": 20})

    (warning,) = summary.warnings()
    assert "imbalanced ('a' has 200 images, 'b' 20)" in warning
    assert not _summary(class_counts={"a": 190, "b": 20}).warnings()


def test_long_unreadable_list_is_cut_at_twenty() -> None:
    bad = tuple((f"x/{i:02d}.png", "the file is empty") for i in range(25))
    text = _summary(unreadable=bad).to_text()

    assert "Unreadable: 25 files" in text
    assert "x/19.png" in text and "x/20.png" not in text
    assert "  ... and 5 more" in text


def test_to_dict_is_json_ready(image_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "csv_data" / "images" / "00.png").write_bytes(b"")
    data = summarize(load_table(image_csv)).to_dict()

    assert json.loads(json.dumps(data)) == data
    assert data["class_counts"] == {"1": 8, "2": 8, "10": 8}
    assert data["unreadable"] == [{"path": "images/00.png", "reason": "the file is empty"}]
    assert data["widths"] == [40, 40, 40] and data["n_groups"] == 12
    assert data["warnings"] == []
