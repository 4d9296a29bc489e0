"""Every user error in docs/errors.md, run through the real `hpo` command.

Each row of the catalogue has one test here, named ``test_eNN_...`` after the row's ID. The
expected message is read from the catalogue itself (placeholders such as ``<cwd>`` filled in),
so the documentation and the behaviour cannot drift apart. Every test checks what the design
promises for an error a user can cause: exit status 2, exactly one line saying what to fix, no
traceback, and a study that already exists left exactly as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from search.cli.main import main
from search.context import RunRequest
from search.engine.run import prepare, run
from search.study import data as data_module
from trainer.errors import DataError

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ROW = re.compile(r"^\| (E\d\d) \|")
# The image cache shows a progress bar on stderr while it decodes; it is not part of the error.
PROGRESS = re.compile(r"^Caching \d+ images at \d+px")

SPACE = """\
from search.space import loguniform

data = "data"
image_size = 32
folds = 2
epochs = 1
backbone = "test_vit"
tracking = "none"
augment = "none"
hflip = False
batch_size = 8
lr = loguniform(1e-3, 5e-3)
"""
COLOURS = {"cat": (200, 60, 50), "dog": (50, 190, 70)}


# --- the catalogue ---------------------------------------------------------------------------


def catalogue() -> dict[str, str]:
    """Row ID -> message (what `hpo` prints after ``hpo: error: ``), from docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if not ROW.match(line):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"a catalogue row needs 5 cells: {line}"
        message = cells[3]
        assert message.startswith("`` ") and message.endswith(" ``"), f"quote the message: {line}"
        rows[cells[0]] = message[3:-3]
    return rows


MESSAGES = catalogue()


def expected(row: str) -> str:
    """The catalogue's message of ``row``, ``<cwd>`` replaced by the working directory."""
    return MESSAGES[row].replace("<cwd>", str(Path.cwd().resolve()))


def test_every_catalogue_row_has_a_test_and_every_test_a_row():
    tested = {name[5:8].upper() for name in globals() if re.match(r"test_e\d\d_", name)}
    assert len(MESSAGES) >= 25
    assert tested == set(MESSAGES)


def test_every_message_is_one_sentence_that_names_a_fix():
    # "<what is wrong with which input>; <what to do>.", or "<input> must/needs <what>."
    def one_sentence(message: str) -> bool:
        fix = "; " in message or " must " in message or " needs " in message
        return fix and message[-1] in ".?" and ". " not in message.replace("e.g. ", "")

    assert [row for row, m in MESSAGES.items() if not one_sentence(m)] == []


# --- what every error must look like -----------------------------------------------------------


def fails(capsys: pytest.CaptureFixture[str], row: str, argv: Sequence[str]) -> None:
    """Run ``hpo argv``: exit status 2 and the row's message as the only line on stderr."""
    status = main(list(argv))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line and not PROGRESS.match(line)]
    assert lines == [f"hpo: error: {expected(row)}"]


def snapshot(name: str = "tiny") -> dict[str, Any] | None:
    """Everything a study stores (None when no study of that name exists)."""
    storage = Path("studies") / name / "study.db"
    if not storage.exists():
        return None
    url = f"sqlite:///{storage}"
    if name not in optuna.get_all_study_names(url):
        return None
    study = optuna.load_study(study_name=name, storage=url)
    trials = [
        (t.number, t.state, t.values, t.params, t.user_attrs, t.intermediate_values)
        for t in study.get_trials(deepcopy=False)
    ]
    return {"attrs": study.user_attrs, "trials": trials}


def untouched(capsys, row: str, argv: Sequence[str], *, new: str = "fresh") -> None:
    """`fails`, and afterwards study "tiny" is as it was and study ``new`` was never made."""
    before = snapshot()
    assert before is not None and before["trials"]
    fails(capsys, row, argv)
    assert snapshot() == before
    assert snapshot(new) is None


# --- data and studies to fail on -------------------------------------------------------------


def write_png(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    noise = np.random.default_rng(seed).integers(-12, 13, (16, 16, 3))
    pixels = (np.asarray(colour) + noise).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def image_folder(root: Path, per_class: int = 4) -> Path:
    """cat/ and dog/ with ``per_class`` small PNGs each."""
    for label, colour in COLOURS.items():
        for i in range(per_class):
            write_png(root / label / f"{i}.png", colour, seed=i)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder with tiny.py, its data/ and study "tiny" with one finished trial (made once)."""
    root = tmp_path_factory.mktemp("template")
    (root / "tiny.py").write_text(SPACE)
    image_folder(root / "data")
    here = Path.cwd()
    os.chdir(root)
    try:
        run(RunRequest(space="tiny.py", trials=1, progress=False), hooks=[])
    finally:
        os.chdir(here)
    shutil.rmtree(root / "studies" / "cache", ignore_errors=True)
    return root


@pytest.fixture(autouse=True)
def project(_isolated_cwd, template) -> Path:
    """This test's folder (the working directory): a copy of the template."""
    shutil.copytree(template, Path.cwd(), dirs_exist_ok=True)
    return Path.cwd()


def broken_copy(name: str, damage: Callable[[bytes], bytes]) -> str:
    """A copy of data/ whose cat/0.png is replaced by what ``damage(png_bytes)`` returns."""
    shutil.copytree("data", name)
    target = Path(name) / "cat" / "0.png"
    target.write_bytes(damage(target.read_bytes()))
    return name


# --- space file --------------------------------------------------------------------------------


def space_file(name: str, text: str) -> str:
    Path(name).write_text(text)
    return name


def test_e01_space_file_missing(capsys):
    untouched(capsys, "E01", ["run", "nothere.py", "--study", "tiny"])


def test_e02_space_file_syntax_error(capsys):
    bad = space_file("broken.py", SPACE + "lr = (\n")
    untouched(capsys, "E02", ["run", bad, "--study", "tiny"])


def test_e03_space_file_unknown_name(capsys):
    typo = space_file("typo.py", SPACE + "epocs = 3\n")
    untouched(capsys, "E03", ["run", typo, "--study", "tiny"])


def test_e04_space_file_bounds_in_the_wrong_order(capsys):
    bounds = space_file(
        "bounds.py", SPACE.replace("loguniform(1e-3, 5e-3)", "loguniform(0.1, 0.01)")
    )
    untouched(capsys, "E04", ["run", bounds, "--study", "tiny"])


def test_e05_space_file_log_scale_from_zero(capsys):
    zero = space_file("zero.py", SPACE.replace("(1e-3, 5e-3)", "(0, 0.1)"))
    untouched(capsys, "E05", ["run", zero, "--study", "tiny"])


CONDITION = 'from search.space import choice, uniform\nloss = choice("ce", "focal")\n'


def test_e06_condition_on_an_unknown_parameter(capsys):
    text = SPACE + CONDITION + 'focal_gamma = uniform(0.5, 3.0, when={"los": "focal"})\n'
    untouched(capsys, "E06", ["run", space_file("cond.py", text), "--study", "tiny"])


def test_e07_condition_on_a_value_that_never_occurs(capsys):
    text = SPACE + CONDITION + 'focal_gamma = uniform(0.5, 3.0, when={"loss": "focl"})\n'
    untouched(capsys, "E07", ["run", space_file("cond.py", text), "--study", "tiny"])


def test_e08_a_study_setting_searched(capsys):
    text = SPACE.replace("folds = 2", "from search.space import choice\nfolds = choice(2, 3)")
    untouched(capsys, "E08", ["run", space_file("folds.py", text), "--study", "tiny"])


def test_e42_metric_searched(capsys):
    text = SPACE + 'from search.space import choice\nmetric = choice("log_loss", "accuracy")\n'
    untouched(capsys, "E42", ["run", space_file("metric.py", text), "--study", "tiny"])


def test_e80_searching_what_a_converged_head_ignores(capsys):
    text = SPACE + 'finetune = "head"\n'
    untouched(capsys, "E80", ["run", space_file("head.py", text), "--study", "tiny"])


def test_e09_override_without_equals(capsys):
    untouched(capsys, "E09", ["run", "tiny.py", "lr"])


def test_e10_override_out_of_range(capsys):
    untouched(capsys, "E10", ["run", "tiny.py", "folds=1"])


def test_e11_override_not_one_of_the_choices(capsys):
    untouched(capsys, "E11", ["run", "tiny.py", "optimizer=adamx"])


# --- data --------------------------------------------------------------------------------------


def run_on(data: str) -> list[str]:
    return ["run", "tiny.py", "--data", data, "--study", "fresh"]


def test_e12_data_path_missing(capsys):
    untouched(capsys, "E12", run_on("photos"))


def test_e13_data_folder_empty(capsys):
    Path("empty").mkdir()
    untouched(capsys, "E13", run_on("empty"))


def test_e14_images_without_class_subfolders(capsys):
    shutil.copytree("data/cat", "loose")
    untouched(capsys, "E14", run_on("loose"))


def test_e15_one_class(capsys):
    shutil.copytree("data/cat", "cats/cat")
    untouched(capsys, "E15", run_on("cats"))


def test_e16_a_class_smaller_than_the_folds(capsys):
    image_folder(Path("few"))
    for png in sorted(Path("few/dog").iterdir())[1:]:
        png.unlink()
    untouched(capsys, "E16", run_on("few"))


def test_e17_data_file_that_is_not_a_csv(capsys):
    Path("labels.txt").write_text("cat/0.png cat\n")
    untouched(capsys, "E17", run_on("labels.txt"))


def test_e18_csv_without_path_and_label_columns(capsys):
    Path("labels.csv").write_text("file,class\ndata/cat/0.png,cat\n")
    untouched(capsys, "E18", run_on("labels.csv"))


def test_e19_csv_naming_files_that_do_not_exist(capsys):
    rows = ["path,label", "data/cat/0.png,cat", "data/dog/9.png,dog", "data/dog/0.png,dog"]
    Path("labels.csv").write_text("\n".join(rows) + "\n")
    untouched(capsys, "E19", run_on("labels.csv"))


def test_e20_corrupt_image(capsys):
    def scramble(png: bytes) -> bytes:  # the header survives, the pixel data does not
        return png[:60] + bytes(255 - b for b in png[60:])

    untouched(capsys, "E20", run_on(broken_copy("corrupt", scramble)))


def test_e21_truncated_image(capsys):
    untouched(capsys, "E21", run_on(broken_copy("truncated", lambda png: png[: len(png) // 2])))


def test_e22_zero_byte_image(capsys):
    untouched(capsys, "E22", run_on(broken_copy("zero", lambda png: b"")))


def test_e23_not_an_image(capsys):
    untouched(capsys, "E23", run_on(broken_copy("text", lambda png: b"just some notes\n")))


def test_e24_unknown_builtin_dataset(capsys):
    untouched(capsys, "E24", run_on("builtin:mnist"))


def test_data_error_in_a_running_trial_keeps_the_study_sound(capsys, monkeypatch):
    """A data error met inside a trial fails that trial only; the study runs on once fixed."""
    message = (
        "1 of 8 images in data cannot be read as images (first: cat/0.png (image file is "
        "truncated)); remove or replace them (`hpo data data` lists every one)."
    )

    def cache_meets_a_corrupt_image(*args, **kwargs):
        raise DataError(message)

    before = snapshot()
    with monkeypatch.context() as patch:
        patch.setattr(data_module, "cached_images", cache_meets_a_corrupt_image)
        assert main(["run", "tiny.py", "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == f"hpo: error: {message}"
    assert [line for line in err.splitlines() if "hpo: error:" in line] == [err.splitlines()[-1]]
    after = snapshot()
    assert after["attrs"] == before["attrs"] and after["trials"][:1] == before["trials"]
    (failed,) = after["trials"][1:]
    assert failed[1] == optuna.trial.TrialState.FAIL and failed[4]["fail_reason"] == message
    assert main(["run", "tiny.py", "--trials", "2"]) == 0, capsys.readouterr().err
    states = [trial[1] for trial in snapshot()["trials"]]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2


# --- storage and studies -------------------------------------------------------------------------


def test_e25_storage_url_that_does_not_parse(capsys):
    untouched(capsys, "E25", ["run", "tiny.py", "--storage", "studies.db", "--study", "fresh"])


def test_e26_database_that_cannot_be_reached(capsys):
    url = "postgresql://postgres@127.0.0.1:1/hpo"
    untouched(capsys, "E26", ["run", "tiny.py", "--storage", url, "--study", "fresh"])


def test_e27_sqlite_storage_where_a_file_is_in_the_way(capsys):
    Path("results").write_text("a file, not a folder\n")
    url = f"sqlite:///{Path.cwd().resolve()}/results/study.db"
    untouched(capsys, "E27", ["run", "tiny.py", "--storage", url, "--study", "fresh"])


def test_e28_study_exists_with_another_space(capsys):
    untouched(capsys, "E28", ["run", "tiny.py", "lr=0.002"])


def test_e29_study_exists_with_other_data(capsys):
    image_folder(Path("data2"), per_class=5)
    untouched(capsys, "E29", ["run", "tiny.py", "--data", "data2"])


def test_e47_same_study_name_in_another_storage(capsys):
    # Its trials would have deleted and overwritten the checkpoints in studies/tiny/.
    kept = sorted(p.name for p in Path("studies/tiny").rglob("*"))
    untouched(capsys, "E47", ["run", "tiny.py", "--storage", "sqlite:///other.db"])
    assert sorted(p.name for p in Path("studies/tiny").rglob("*")) == kept
    assert "tiny" not in optuna.get_all_study_names("sqlite:///other.db")


def test_e30_study_name_that_is_not_usable(capsys):
    untouched(capsys, "E30", ["run", "tiny.py", "--study", "a/b"])


def test_e31_status_of_a_study_that_does_not_exist(capsys):
    untouched(capsys, "E31", ["status", "tinny"], new="tinny")


def test_e61_status_of_a_trial_that_does_not_exist(capsys):
    untouched(capsys, "E61", ["status", "tiny", "--trial", "9"])


# --- arguments and models --------------------------------------------------------------------


def test_e32_trials_not_positive(capsys):
    untouched(capsys, "E32", ["run", "tiny.py", "--trials", "0"])


def test_e43_workers_not_positive(capsys):
    untouched(capsys, "E43", ["run", "tiny.py", "--workers", "0"])


def test_e44_unknown_option(capsys):
    untouched(capsys, "E44", ["run", "tiny.py", "--trails", "3"])


def test_e33_trials_setting_not_positive(capsys):
    untouched(capsys, "E33", ["run", "tiny.py", "trials=0"])


def test_e34_unknown_backbone_with_close_names(capsys):
    untouched(capsys, "E34", ["run", "tiny.py", "backbone=resnet5O", "--study", "fresh"])


def test_e35_pretrained_hub_weights_while_offline(tmp_path):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: set it before Python starts."""
    before = snapshot()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    argv = ["run", "tiny.py", "pretrained=True", "--study", "fresh"]
    done = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"hpo: error: {expected('E35')}"]
    assert snapshot() == before and snapshot("fresh") is None


def test_e36_pretrained_weights_file_missing(capsys):
    argv = ["run", "tiny.py", "pretrained=weights/vit.safetensors", "--study", "fresh"]
    untouched(capsys, "E36", argv)


def test_e70_pretrained_weights_of_another_architecture(capsys):
    Path("weights").mkdir()
    save_file(timm.create_model("test_resnet").state_dict(), "weights/resnet.safetensors")
    argv = ["run", "tiny.py", "pretrained=weights/resnet.safetensors", "--study", "fresh"]
    untouched(capsys, "E70", argv)


def test_e71_pretrained_dict_without_a_backbone_of_the_space(capsys):
    weights = "pretrained={'test_resnet': 'weights/resnet.safetensors'}"
    untouched(capsys, "E71", ["run", "tiny.py", weights, "--study", "fresh"])


def test_e72_gpus_that_this_machine_does_not_have(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # the same on a GPU machine
    untouched(capsys, "E72", ["run", "tiny.py", "--gpus", "7"])


# --- export and predict ------------------------------------------------------------------------


def test_e37_export_before_any_trial_finished(capsys):
    prepare(RunRequest(space="tiny.py", study="empty", progress=False))
    before = snapshot("empty")
    fails(capsys, "E37", ["export", "empty", "--no-mlflow"])
    assert snapshot("empty") == before
    assert not Path("studies/empty/export").exists()


def test_e38_export_of_a_study_that_does_not_exist(capsys):
    untouched(capsys, "E38", ["export", "tinny", "--no-mlflow"], new="tinny")


def test_e39_predict_with_a_missing_export(capsys):
    untouched(capsys, "E39", ["predict", "studies/tiny/export", "data"])


def test_e40_predict_with_an_export_for_another_class_count(capsys):
    from safetensors.torch import save_file

    from trainer.config import TrainConfig
    from trainer.inference.ensemble import Manifest, MemberSpec
    from trainer.models import build_model

    config = TrainConfig(backbone="test_vit", image_size=32)
    model = build_model(config, num_classes=3)
    Path("export/members").mkdir(parents=True)
    save_file(model.state_dict(), "export/members/m0.safetensors")
    member = MemberSpec(
        "m0", "members/m0.safetensors", config.to_dict(), (0.5,) * 3, (0.5,) * 3, ""
    )
    Manifest(("cat", "dog"), (member,)).write(Path("export"))
    untouched(capsys, "E40", ["predict", "export", "data"])
    assert not Path("predictions.csv").exists()


def test_e41_predict_input_missing(capsys):
    untouched(capsys, "E41", ["predict", "export", "new_photos"])


def _export_folder_with_an_onnx_file(tta: str) -> None:
    """``export/`` holding an ``ensemble.onnx`` that onnxruntime loads (an identity graph)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 16, 16, 3])
    same = helper.make_tensor_value_info("probs", TensorProto.UINT8, ["N", 16, 16, 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["probs"])], "g", [image], [same]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"classes": '["cat", "dog"]', "image_size": "16", "tta": tta}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    Path("export").mkdir()
    onnx.save(model, "export/ensemble.onnx")


def test_e45_predict_onnx_without_an_onnx_file(capsys):
    Path("export").mkdir()
    untouched(capsys, "E45", ["predict", "export", "data", "--onnx"])
    assert not Path("predictions.csv").exists()


def test_e46_predict_onnx_with_tta(capsys):
    _export_folder_with_an_onnx_file("hflip")
    untouched(capsys, "E46", ["predict", "export", "data", "--onnx", "--tta", "none"])
    assert not Path("predictions.csv").exists()
