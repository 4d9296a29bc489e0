"""Listing datasets: folders, CSVs, builtin:digits, class order, content ids and bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.sources import ImageTable, class_order, load_table


def test_folder_lists_every_image_with_its_class(image_folder: Path) -> None:
    table = load_table(image_folder)

    assert isinstance(table, ImageTable)
    assert len(table) == 24
    assert table.classes == ("bird", "cat", "dog")
    assert table.root == image_folder.resolve()
    assert table.source == str(image_folder)
    assert table.groups is None and table.arrays is None
    assert table.labels.dtype == np.int64
    for i, rel in enumerate(table.paths):
        assert not Path(rel).is_absolute() and "\\" not in rel
        assert rel.split("/")[0] == table.classes[table.labels[i]]
        assert table.file(i).is_file()
    assert np.bincount(table.labels).tolist() == [8, 8, 8]


def test_folder_recurses_ignores_hidden_and_non_images(image_folder: Path) -> None:
    paths = load_table(image_folder).paths

    assert "cat/more/cat_7.webp" in paths
    assert "cat/cat_5.JPEG" in paths  # extension match is case-insensitive
    assert not any(".hidden" in p or p.endswith(".txt") or p.startswith(".git") for p in paths)


def test_folder_listing_is_sorted_and_repeatable(image_folder: Path) -> None:
    first, second = load_table(image_folder), load_table(image_folder)

    assert list(first.paths) == sorted(first.paths)
    assert first.paths == second.paths
    assert first.content_id == second.content_id


def test_table_arrays_cannot_be_modified(image_folder: Path) -> None:
    table = load_table(image_folder)

    with pytest.raises(ValueError):
        table.labels[0] = 2


def test_numeric_class_names_sort_as_numbers(tmp_path: Path, make_image) -> None:
    for name in ("10", "2", "1"):
        make_image(tmp_path / "d" / name / "a.png")

    table = load_table(tmp_path / "d")

    assert table.classes == ("1", "2", "10")
    assert [table.classes[i] for i in table.labels] == ["1", "10", "2"]  # paths sorted as text


def test_mixed_class_names_sort_as_strings() -> None:
    assert class_order(["10", "b", "2", "B"]) == ("10", "2", "B", "b")
    assert class_order(["-1", "03", "2"]) == ("-1", "2", "03")


def test_csv_reads_labels_groups_and_numeric_classes(image_csv: Path) -> None:
    table = load_table(image_csv)

    assert len(table) == 24
    assert table.root == image_csv.parent.resolve()
    assert table.classes == ("1", "2", "10")
    assert table.paths[:2] == ("images/00.png", "images/01.png")
    assert [table.classes[i] for i in table.labels[:3]] == ["1", "2", "10"]
    assert table.groups is not None and table.groups.dtype.kind == "U"
    assert table.groups[:4].tolist() == ["g00", "g01", "g02", "g00"]
    assert len(set(table.groups.tolist())) == 12
    assert all(table.file(i).is_file() for i in range(len(table)))


def test_csv_accepts_absolute_paths_and_no_group(tmp_path: Path, make_image) -> None:
    outside = make_image(tmp_path / "elsewhere" / "x.png")
    inside = make_image(tmp_path / "data" / "y.png")
    csv = tmp_path / "data" / "list.csv"
    csv.write_text(f" Path , Label \n{outside},a\n{inside},b\n")

    table = load_table(csv)

    assert table.paths == (outside.resolve().as_posix(), "y.png")
    assert table.file(0) == outside.resolve()
    assert table.groups is None


def test_content_id_same_for_a_copy_and_ignores_mtime(image_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(image_folder, copy)  # a new absolute root
    some_file = copy / "dog" / "dog_0.png"
    os.utime(some_file, ns=(1, 1))

    assert load_table(copy).content_id == load_table(image_folder).content_id


def test_content_id_changes_with_file_size_label_or_group(image_csv: Path) -> None:
    before = load_table(image_csv).content_id
    with open(image_csv.parent / "images" / "00.png", "ab") as handle:
        handle.write(b"\0")
    grown = load_table(image_csv).content_id
    image_csv.write_text(
        image_csv.read_text().replace("images/05.png,10,g02", "images/05.png,10,g99")
    )
    regrouped = load_table(image_csv).content_id

    assert len({before, grown, regrouped}) == 3


def test_builtin_digits() -> None:
    table = load_table("builtin:digits")

    assert len(table) == 1797
    assert table.classes == tuple(str(d) for d in range(10))
    assert table.root is None and table.groups is None
    assert table.arrays is not None
    assert table.arrays.shape == (1797, 8, 8, 3) and table.arrays.dtype == np.uint8
    assert table.arrays.max() == 255 and table.arrays.min() == 0
    assert np.array_equal(table.arrays[..., 0], table.arrays[..., 2])
    assert table.paths[17] == "digits/00017"
    assert table.content_id == load_table("builtin:digits").content_id
    with pytest.raises(ValueError, match="no files"):
        table.file(0)


# --- errors ------------------------------------------------------------------------------------


def _error(source: str | Path) -> str:
    with pytest.raises(DataError) as caught:
        load_table(source)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message
    return message


def test_missing_path(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope")

    assert "nope does not exist" in message and "builtin:digits" in message


def test_unknown_builtin() -> None:
    message = _error("builtin:mnist")

    assert "builtin:mnist" in message and "builtin:digits" in message


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    assert "empty has no images in class subfolders" in _error(tmp_path / "empty")


def test_folder_with_only_non_images(tmp_path: Path) -> None:
    (tmp_path / "d" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "cat" / "readme.txt").write_text("hi")
    (tmp_path / "d" / "cat" / ".hidden.png").write_bytes(b"")

    assert "has no images in class subfolders" in _error(tmp_path / "d")


def test_folder_of_loose_images_asks_for_subfolders(tmp_path: Path, make_image) -> None:
    for i in range(3):
        make_image(tmp_path / "flat" / f"{i}.jpg")

    message = _error(tmp_path / "flat")

    assert "flat has 3 images but no class subfolders" in message and "subfolder" in message


def test_only_one_class(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "d" / "cat" / "a.png")
    (tmp_path / "d" / "dog").mkdir()  # empty class folders do not count

    message = _error(tmp_path / "d")

    assert "only one class ('cat'" in message and "at least two" in message


def test_file_that_is_not_a_csv(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")

    assert "data.json is a file but not a .csv" in _error(tmp_path / "data.json")


def test_csv_missing_columns_names_them_and_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,label\na.png,cat\n")

    message = _error(tmp_path / "l.csv")

    assert "lacks column(s) path (found: file, label)" in message


def test_csv_missing_both_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("filename,class,patient\na.png,cat,1\n")

    assert "lacks column(s) path, label (found: filename, class, patient)" in _error(
        tmp_path / "l.csv"
    )


def test_csv_rows_whose_files_are_missing(image_csv: Path) -> None:
    text = image_csv.read_text().replace("images/03.png", "images/gone3.png")
    image_csv.write_text(text.replace("images/04.png", "images/gone4.png"))

    message = _error(image_csv)

    assert "lists 2 file(s) that do not exist" in message
    assert "images/gone3.png, images/gone4.png" in message


def test_csv_empty_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("path,label\n")

    assert "empty.csv cannot be parsed" in _error(tmp_path / "empty.csv")
    assert "header.csv has a header but no rows" in _error(tmp_path / "header.csv")


def test_csv_empty_label_names_the_line(image_csv: Path) -> None:
    image_csv.write_text(image_csv.read_text().replace("images/02.png,10,", "images/02.png,,"))

    message = _error(image_csv)

    assert "1 row(s) with an empty label (first at line 4)" in message


def test_csv_duplicate_paths(image_csv: Path) -> None:
    image_csv.write_text(image_csv.read_text() + "images/00.png,2,g05\n")

    assert "lists 1 path(s) more than once (first: images/00.png)" in _error(image_csv)


def test_csv_one_class(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("path,label\na.png,cat\n")

    assert "only one class" in _error(tmp_path / "l.csv")


def test_csv_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_bytes(b"path,label\n\xff\xfe\x00\x81,\x9f\n")

    assert "l.csv cannot be parsed" in _error(tmp_path / "l.csv")


def test_unreadable_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "locked").mkdir()

    def refuse(self: Path):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)

    assert "cannot be read (Permission denied: " in _error(tmp_path / "locked")
