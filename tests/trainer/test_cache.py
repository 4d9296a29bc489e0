"""The decode-once image cache: reuse, rebuilds on change, failures, parallel and racing builds."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainer
import trainer.cache as cache
import trainer.images as images
from tests.support.deep_png import write_png16
from trainer.cache import CachedImages, cache_dir, cached_images, worker_count
from trainer.cpus import cpu_count
from trainer.errors import DataError
from trainer.images import decode_image, resize_array
from trainer.sources import load_table

REPO = Path(trainer.__file__).resolve().parents[1]


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every file `trainer.cache` decodes in this process (use with n_jobs=1)."""
    seen: list[Path] = []

    def counting(path: Path, size: int) -> np.ndarray:
        seen.append(path)
        return decode_image(path, size)

    monkeypatch.setattr(cache, "decode_image", counting)
    return seen


def _build(source: Path | str, size: int = 24, **kwargs) -> CachedImages:
    kwargs.setdefault("n_jobs", 1)
    kwargs.setdefault("progress", False)
    return cached_images(load_table(source), size, **kwargs)


def _npy_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".npy")


def test_cache_dir_default_and_environment(tmp_path: Path, monkeypatch) -> None:
    assert cache_dir() == tmp_path / "studies" / "cache"  # tests run in tmp_path
    monkeypatch.setenv("HPO_CACHE_DIR", "elsewhere/c")
    assert cache_dir() == tmp_path / "elsewhere" / "c"


def test_second_use_decodes_nothing_and_is_identical(image_folder: Path, decodes) -> None:
    first = _build(image_folder)
    copy = np.array(first.images)
    second = _build(image_folder)

    assert first.decoded == 24 and len(decodes) == 24
    assert second.decoded == 0 and len(decodes) == 24
    assert second.path == first.path and first.path.parent == cache_dir()
    assert np.array_equal(second.images, copy)
    assert second.images.shape == (24, 24, 24, 3) and second.images.dtype == np.uint8
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable


def test_pickling_reopens_the_file_instead_of_copying_pixels() -> None:
    cached = cached_images(load_table("builtin:digits"), 32, progress=False)

    data = pickle.dumps(cached)
    copy = pickle.loads(data)

    assert cached.images.nbytes > 5_000_000 and len(data) < 100_000
    assert isinstance(copy.images, np.memmap) and np.array_equal(copy.images, cached.images)
    assert copy.path == cached.path and copy.classes == cached.classes
    assert np.array_equal(copy.labels, cached.labels)


def test_rows_are_the_decoded_images_in_table_order(image_csv: Path) -> None:
    table = load_table(image_csv)
    cached = cached_images(table, 20, n_jobs=1, progress=False)

    assert len(cached) == 24
    assert cached.classes == table.classes
    assert np.array_equal(cached.labels, table.labels)
    assert np.array_equal(cached.groups, table.groups)
    for i in (0, 7, 23):
        assert np.array_equal(cached.images[i], decode_image(table.file(i), 20))


def test_touching_a_file_rebuilds(image_folder: Path, decodes) -> None:
    first = _build(image_folder)
    target = image_folder / "dog" / "dog_3.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    second = _build(image_folder)

    assert second.decoded == 24 and len(decodes) == 48
    assert second.path != first.path
    assert np.array_equal(second.images, first.images)  # same pixels, fresh key


def test_changing_a_file_rebuilds_with_new_pixels(image_folder: Path, make_image) -> None:
    first = _build(image_folder)
    table = load_table(image_folder)
    index = table.paths.index("bird/bird_0.png")
    make_image(image_folder / "bird" / "bird_0.png", colour=(250, 250, 0), noise=0)

    second = _build(image_folder)

    assert second.decoded == 24
    assert second.images[index, 5, 5].tolist() == [250, 250, 0]
    assert not np.array_equal(first.images[index], second.images[index])


def test_a_new_decoder_rebuilds(image_folder: Path, decodes, monkeypatch) -> None:
    # A cache made by an older decoding must not keep feeding training its old pixels.
    first = _build(image_folder)
    monkeypatch.setattr(images, "DECODER_VERSION", images.DECODER_VERSION + 1)

    second = _build(image_folder)

    assert second.decoded == 24 and len(decodes) == 48
    assert second.path != first.path


def _reference_images(folder: Path) -> list[Path]:
    """One file per decoding path: 8-bit, palette with transparency, 16-bit, sBIT, 48/64-bit."""
    rng = np.random.default_rng(24)
    deep = rng.integers(0, 65536, (12, 12, 4), dtype=np.uint16)
    folder.mkdir()
    Image.fromarray(deep[..., :3].astype(np.uint8)).save(folder / "rgb.png")
    Image.fromarray(deep[..., 0].astype(np.uint8) % 6).convert("P").save(
        folder / "palette.png", transparency=2
    )
    Image.fromarray(deep[..., 0]).save(folder / "grey16.png")
    Image.fromarray((deep[..., 0] / 65535).astype(np.float32)).save(folder / "float.tif")
    Image.fromarray(deep[..., 2].astype(np.int32) >> 6).save(folder / "int32.tif")
    write_png16(folder / "twelve.png", deep[..., 1] >> 4, significant_bits=12)
    write_png16(folder / "rgb48.png", deep[..., :3])
    write_png16(folder / "rgba64.png", deep)
    return sorted(folder.iterdir())


# The digest of the reference images' decoded pixels under each DECODER_VERSION. A change to
# decoding changes the digest: bump DECODER_VERSION (so every cache is rebuilt) and add it here.
DECODED_DIGESTS = {2: "50171e3dc709ef6d"}


def test_decoding_changes_only_with_a_new_decoder_version(tmp_path: Path) -> None:
    digest = hashlib.sha256()
    for path in _reference_images(tmp_path / "reference"):
        digest.update(decode_image(path, 12).tobytes())  # native size: no resampling involved
    grey = np.arange(144).reshape(12, 12)
    for values in (grey.astype(np.uint16) * 400, grey, np.eye(12) * 0.5):
        digest.update(resize_array(values, 12).tobytes())

    assert DECODED_DIGESTS.get(images.DECODER_VERSION) == digest.hexdigest()[:16], (
        "decoded pixels changed: bump trainer.images.DECODER_VERSION and record the new digest"
    )


def test_the_cache_key_names_the_decoder(image_folder: Path, monkeypatch) -> None:
    table = load_table(image_folder)
    before = cache.cache_file_name(table, 24)
    monkeypatch.setattr(images, "_REDUCING_GAP", 2.0)

    assert cache.cache_file_name(table, 24) != before


def test_each_size_has_its_own_cache(image_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    small, large = (
        _build(image_folder, 16, directory=folder),
        _build(image_folder, 32, directory=folder),
    )

    assert small.images.shape[1:3] == (16, 16) and large.images.shape[1:3] == (32, 32)
    assert _build(image_folder, 16, directory=folder).decoded == 0
    assert len(_npy_files(folder)) == 2


def test_parallel_build_equals_serial(image_folder: Path, tmp_path: Path) -> None:
    serial = _build(image_folder, directory=tmp_path / "one", n_jobs=1)
    parallel = _build(image_folder, directory=tmp_path / "two", n_jobs=2)

    assert parallel.decoded == 24
    assert np.array_equal(serial.images, parallel.images)


def test_worker_count_follows_joblib_convention() -> None:
    cores = cpu_count()

    assert worker_count(None, tasks=1000) == cores
    assert worker_count(-1, tasks=1000) == cores
    assert worker_count(-2, tasks=1000) == max(cores - 1, 1)
    assert worker_count(3, tasks=2) == 2
    assert worker_count(0, tasks=5) == 1


def test_unreadable_images_are_all_found_then_reported(image_folder: Path, decodes) -> None:
    (image_folder / "cat" / "empty.png").write_bytes(b"")
    (image_folder / "dog" / "text.jpg").write_text("not pixels")

    with pytest.raises(DataError) as caught:
        _build(image_folder)

    message = str(caught.value)
    assert len(decodes) == 26  # kept decoding after the first failure
    assert message.startswith(f"2 of 26 images in {image_folder} cannot be read as images (first: ")
    assert "cat/empty.png (the file is empty), dog/text.jpg (not a recognised image" in message
    assert f"`hpo data {image_folder}` lists every one" in message
    assert os.listdir(cache_dir()) == [p for p in os.listdir(cache_dir()) if p.endswith(".lock")]


def test_failure_message_shows_only_the_first_three(image_folder: Path) -> None:
    for i in range(5):
        (image_folder / "cat" / f"bad{i}.png").write_bytes(b"")

    with pytest.raises(
        DataError, match=r"5 of 29 images .*bad2\.png \(the file is empty\), \.\.\."
    ):
        _build(image_folder)


def test_builtin_digits_cached_too(decodes) -> None:
    table = load_table("builtin:digits")
    first = cached_images(table, 16, progress=False)
    second = cached_images(table, 16, progress=False)

    assert first.decoded == 1797 and second.decoded == 0 and decodes == []
    assert second.images.shape == (1797, 16, 16, 3)
    assert np.array_equal(second.images[5], resize_array(table.arrays[5], 16))
    assert second.path is not None and second.path.name.startswith("builtin_digits-16px-")


def test_damaged_cache_file_is_rebuilt(image_folder: Path) -> None:
    first = _build(image_folder)
    expected = np.array(first.images)
    path = first.path
    del first
    path.write_bytes(path.read_bytes()[:500])

    again = _build(image_folder)

    assert again.decoded == 24 and np.array_equal(again.images, expected)


def test_a_killed_builders_temporary_file_goes_with_the_next_build(image_folder: Path) -> None:
    path = _build(image_folder).path
    assert path is not None
    path.unlink()
    leftover = path.with_name(f"{path.stem}.99999999.tmp.npy")  # as a SIGKILLed builder leaves
    leftover.write_bytes(b"\0" * 1000)
    other = path.with_name(f"{path.stem}-x.7.tmp.npy")  # another target's: not this build's
    other.write_bytes(b"")

    again = _build(image_folder)

    assert again.decoded == 24
    assert not leftover.exists() and other.exists()


def test_file_removed_after_listing(image_folder: Path) -> None:
    table = load_table(image_folder)
    (image_folder / "cat" / "cat_0.png").unlink()

    with pytest.raises(DataError, match=r"cat_0\.png was removed after .* run the command again"):
        cached_images(table, 24, progress=False)


def test_cache_folder_that_cannot_be_created(image_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(DataError, match="set HPO_CACHE_DIR to a writable folder"):
        _build(image_folder, directory=blocker / "cache")


def test_progress_bar_goes_to_stderr_only_when_asked(image_folder: Path, tmp_path: Path, capsys):
    _build(image_folder, directory=tmp_path / "quiet")
    quiet = capsys.readouterr()
    _build(image_folder, directory=tmp_path / "loud", progress=True)
    loud = capsys.readouterr()

    assert quiet.err == "" and quiet.out == ""
    assert "Caching 24 images at 24px" in loud.err and loud.out == ""


_RACER = """
import json, sys, time
from pathlib import Path
import trainer.cache as cache
from trainer.sources import load_table

real = cache.decode_image
def slow(path, size):
    time.sleep(0.02)  # widen the build window so the two processes overlap
    return real(path, size)
cache.decode_image = slow

table = load_table(sys.argv[1])
Path(sys.argv[3]).touch()
while not Path(sys.argv[4]).exists():
    time.sleep(0.005)
result = cache.cached_images(table, 24, directory=Path(sys.argv[2]), n_jobs=1, progress=False)
print(json.dumps({"decoded": result.decoded, "path": str(result.path)}))
"""


def test_two_processes_build_one_valid_cache(image_folder: Path, tmp_path: Path) -> None:
    folder, go = tmp_path / "shared", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ready = [tmp_path / f"ready{k}" for k in range(2)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(image_folder), str(folder), str(r), str(go)],
            stdout=subprocess.PIPE,
            env=env,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]

    assert all(racer.returncode == 0 for racer in racers)
    assert sorted(r["decoded"] for r in results) == [0, 24]
    assert results[0]["path"] == results[1]["path"]
    assert _npy_files(folder) == [Path(results[0]["path"]).name]  # no temporary left behind
    reference = _build(image_folder, directory=tmp_path / "reference")
    assert np.array_equal(np.load(results[0]["path"]), reference.images)
