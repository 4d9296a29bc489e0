"""Backbones from `timm`, built from a `TrainConfig`, with errors that say how to fix the input.

Pretrained weights come from timm's hub (``pretrained=True``) or from a local file
(``pretrained="/path/weights.safetensors"``). timm loads both with safetensors or
``torch.load(weights_only=True)``, so a weights file cannot run code.

A backbone named by a source (``hf-hub:org/name``, ``local-dir:/folder``) is resolved by timm
through the source's ``config.json``, even without weights. `resolve_architecture` reads that
once, so that an export can rebuild the model later without the hub or the folder.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from timm.layers import freeze_batch_norm_2d
from timm.models import _hub as timm_hub

from trainer.config import TrainConfig, weights_for
from trainer.errors import ConfigError, UserError
from trainer.weights import quiet_key_lists

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
"""File extensions accepted for ``pretrained=<path>`` (safetensors, or a torch state dict)."""

# Keys a checkpoint may lack without changing the model (BatchNorm's step counter).
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)
# The hub files timm tries when a pretrained config names no file of its own.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def build_model(
    config: TrainConfig, num_classes: int, *, architecture: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Create the timm backbone named by ``config`` with a fresh ``num_classes``-way head.

    With ``config.finetune == "head"`` only the classifier stays trainable and BatchNorm layers
    are replaced by frozen ones (they use the pretrained running statistics in train mode too),
    so the backbone is a fixed feature extractor.

    Args:
        config: Uses ``backbone``, ``pretrained`` (a dict's entry for the backbone),
            ``dropout``, ``drop_path`` and ``finetune``.
        num_classes: Outputs of the classifier head.
        architecture: What `resolve_architecture` returned for ``config.backbone``; the model
            is then built from it, without reading the backbone's source.

    Returns:
        The model on the CPU, in train mode.

    Raises:
        UserError: Unknown backbone, unavailable or unusable pretrained weights, or a drop
            rate the backbone does not support.
    """
    if architecture is None:
        check_backbone(config.backbone)
    config = config.replace(pretrained=weights_for(config.pretrained, config.backbone))
    weights = _weights_path(config.pretrained)
    with quiet_key_lists():  # `_check_weights_fit` says what matters in one sentence
        model = _create(config, num_classes, weights, architecture)
    if weights is not None:
        _check_weights_fit(model, weights, config.backbone)
    if config.finetune == "head":
        model = _freeze_backbone(model)
    return model


def normalization(
    model: torch.nn.Module,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The per-channel ``(mean, std)`` the backbone expects, for inputs scaled to [0, 1].

    Args:
        model: A model built by timm.

    Returns:
        ``(mean, std)``, three floats each.
    """
    data_config = timm.data.resolve_model_data_config(model)
    return _three(data_config["mean"]), _three(data_config["std"])


def close_backbones(name: str, limit: int = 5) -> list[str]:
    """The timm model names most similar to ``name``, best first (for "did you mean").

    Args:
        name: A misspelt or unknown model name.
        limit: Most names to return.

    Returns:
        Up to ``limit`` names from ``timm.list_models()``; empty if nothing is close.
    """
    return difflib.get_close_matches(name.lower(), timm.list_models(), n=limit, cutoff=0.6)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer should update (those with ``requires_grad``)."""
    return [p for p in model.parameters() if p.requires_grad]


def _three(values: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """Three floats from a per-channel statistic (a single value is repeated)."""
    floats = [float(v) for v in values]
    if len(floats) == 1:
        floats *= 3
    return floats[0], floats[1], floats[2]


def check_backbone(name: str, where: str = "") -> None:
    """Raise a `ConfigError` with close names when timm does not know ``name``.

    ``where`` (e.g. the space file) is named in the message. ``hf-hub:`` and ``local-dir:``
    names pass: timm resolves them when the model is built.
    """
    if ":" in name or timm.is_model(name):
        return
    close = ", ".join(close_backbones(name)) or "none close"
    place = f" in {where}" if where else ""
    raise ConfigError(
        f"Unknown backbone {name!r}{place} (close names: {close}); use a name from "
        "timm.list_models()."
    )


def resolve_architecture(backbone: str) -> dict[str, Any] | None:
    """What timm reads from the source of an ``hf-hub:`` or ``local-dir:`` backbone.

    Returns:
        ``{"name": timm architecture, "pretrained_cfg": {...}, "model_args": {...}}``, JSON-safe
        and without the source's location (`build_model` needs nothing else), or None for a
        name in timm's registry, which needs no source.

    Raises:
        UserError: The source's config cannot be read (folder gone, hub unreachable).
    """
    source, model_id = timm.models.parse_model_name(backbone)
    if source is None:
        return None
    try:
        if source == "hf-hub":
            cfg, name, model_args = timm.models.load_model_config_from_hf(model_id)
        else:  # timm knows no other source; it raised on the name otherwise
            cfg, name, model_args = timm_hub.load_model_config_from_path(model_id)
    except Exception as err:  # the hub and the file system raise many unrelated types
        raise UserError(
            f"Backbone {backbone!r} cannot be resolved ({_reason(err)}); restore the folder or "
            "hub access it was trained from, then export again."
        ) from err
    cfg = timm.models.filter_pretrained_cfg(cfg, remove_source=True, remove_null=True)
    return {"name": name, "pretrained_cfg": _json_safe(cfg), "model_args": _json_safe(model_args)}


def _json_safe(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON gives back; timm accepts both)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def check_weights_file(backbone: str, weights: str) -> None:
    """Fail now, not in a trial, when a weights file does not load into ``backbone``.

    Builds the backbone from the file as a trial would (its head aside), so a missing,
    corrupt or foreign file is reported in one sentence before a study exists.

    Raises:
        UserError: The file is missing, unreadable, or holds another architecture's tensors.
    """
    build_model(TrainConfig(backbone=backbone, pretrained=weights), num_classes=2)


def check_pretrained(backbone: str, pretrained: bool | str) -> None:
    """Fail now, not in a trial, when the pretrained weights asked for cannot be had.

    A weights file must exist and have a supported extension. Hub weights must already be in
    the local Hugging Face cache when the hub is offline (``HF_HUB_OFFLINE``); online, they are
    downloaded when the model is built.

    Raises:
        UserError: The file is missing or unusable, or the hub is offline and the weights of
            ``backbone`` are not cached.
    """
    if isinstance(pretrained, str):
        _weights_path(pretrained)
        return
    if pretrained and hub_constants.HF_HUB_OFFLINE and not _hub_weights_cached(backbone):
        raise UserError(
            f"pretrained=True needs timm's hub weights for backbone {backbone!r}, but "
            "HF_HUB_OFFLINE is set and they are not in the local cache; download the weights "
            "file on a connected machine and pass its path as "
            "pretrained='/path/file.safetensors', or use pretrained=False."
        )


def _hub_weights_cached(backbone: str) -> bool:
    """Whether timm would find ``backbone``'s hub weights in the local cache (True if unsure)."""
    if ":" in backbone:  # "hf-hub:..." and "local-dir:..." are resolved by timm itself
        return True
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError:  # an unknown pretrained tag: building the model reports it
        return True
    if cfg is None or not cfg.hf_hub_id:
        return True  # no hub weights: building the model reports it
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
    return any(
        isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str)
        for name in names
    )


def _weights_path(pretrained: bool | str) -> Path | None:
    """The validated absolute path of a local weights file, or None for True/False."""
    if isinstance(pretrained, bool):
        return None
    path = Path(pretrained).expanduser().resolve()
    if not path.is_file():
        raise UserError(
            f"Pretrained weights file {str(pretrained)!r} does not exist; pass the path of an "
            "existing .safetensors or .pth file, or pretrained=True/False."
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(
            f"Pretrained weights file {str(pretrained)!r} has an unsupported extension; "
            f"use one of {', '.join(WEIGHT_SUFFIXES)} (a saved state dict)."
        )
    return path


def _model_kwargs(config: TrainConfig, num_classes: int, weights: Path | None) -> dict:
    """Keyword arguments for `timm.create_model`."""
    kwargs: dict = {"pretrained": bool(config.pretrained), "num_classes": num_classes}
    # Many backbones (densenet, dla, ghostnet, inception, ...) reject drop_path_rate and a few
    # encoders reject drop_rate, so a rate is only passed when it is in use.
    if config.dropout > 0:
        kwargs["drop_rate"] = config.dropout
    if config.drop_path > 0:
        kwargs["drop_path_rate"] = config.drop_path
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    return kwargs


def _create(
    config: TrainConfig,
    num_classes: int,
    weights: Path | None,
    architecture: Mapping[str, Any] | None,
) -> torch.nn.Module:
    """Call `timm.create_model`, turning the failures a user can fix into `UserError`."""
    kwargs = _model_kwargs(config, num_classes, weights)
    name = config.backbone
    if architecture is not None:
        # What timm does for a sourced name, from the stored copy: the source's model
        # arguments under ours, and its pretrained config.
        name = architecture["name"]
        kwargs = {**architecture["model_args"], **kwargs}
        kwargs["pretrained_cfg"] = dict(architecture["pretrained_cfg"])
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        field = _rejected_rate(err)
        if field is None:
            raise
        raise UserError(
            f"Backbone {config.backbone!r} does not support {field}; set {field}=0 for it "
            "or pick another backbone."
        ) from err
    except Exception as err:  # timm, safetensors, torch and the hub raise many unrelated types
        if weights is not None:
            raise _unusable_file(config.backbone, weights, err) from err
        if config.pretrained is True:
            raise _hub_failure(config.backbone, err) from err
        raise


def _rejected_rate(err: TypeError) -> str | None:
    """The config field whose timm argument a constructor rejected, if that is the error."""
    for field, argument in (("drop_path", "drop_path_rate"), ("dropout", "drop_rate")):
        if f"'{argument}'" in str(err) or f"['{argument}']" in str(err):
            return field
    return None


def _reason(err: Exception) -> str:
    """An exception message on one line, short enough for a one-sentence error."""
    text = " ".join(str(err).split())
    return text[:200] if text else type(err).__name__


def _unusable_file(backbone: str, weights: Path, err: Exception) -> UserError:
    """A `UserError` for a weights file that timm could not load into the backbone."""
    return UserError(
        f"Pretrained weights file {str(weights)!r} could not be loaded into backbone "
        f"{backbone!r} ({_reason(err)}); pass weights saved from a {backbone!r} model."
    )


def _hub_failure(backbone: str, err: Exception) -> UserError:
    """A `UserError` for hub weights that are missing, or not downloadable from here."""
    if "No pretrained weights exist" in str(err):
        return UserError(
            f"timm has no pretrained weights for backbone {backbone!r}; use pretrained=False "
            "or pass a weights file as pretrained='/path/file.safetensors'."
        )
    return UserError(
        f"Pretrained weights for backbone {backbone!r} could not be downloaded (offline, or "
        f"HF_HUB_OFFLINE is set: {type(err).__name__}: {_reason(err)}); download the weights "
        "file on a connected machine and pass its path as pretrained='/path/file.safetensors'."
    )


def _check_weights_fit(model: torch.nn.Module, weights: Path, backbone: str) -> None:
    """Raise a `UserError` if backbone tensors were missing from the weights file.

    timm loads non-strictly when the head is resized, so a file from another architecture
    would otherwise leave the backbone silently random.
    """
    head = _classifier_prefix(model)
    expected = {
        key
        for key in model.state_dict()
        if not key.startswith(head) and not key.endswith(_OPTIONAL_KEY_SUFFIXES)
    }
    missing = sorted(expected - _file_keys(weights))
    if missing:
        shown = ", ".join(missing[:3])
        raise UserError(
            f"Pretrained weights file {str(weights)!r} does not fit backbone {backbone!r} "
            f"({len(missing)} of {len(expected)} tensors missing, e.g. {shown}); pass weights "
            f"saved from a {backbone!r} model."
        )


def _classifier_prefix(model: torch.nn.Module) -> str:
    """The state-dict key prefix of the classifier head (e.g. ``"fc."``)."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name + "."
    return "\0"  # no named classifier: nothing is excluded


def _file_keys(weights: Path) -> set[str]:
    """Tensor names stored in a weights file, unwrapped and cleaned the way timm loads them."""
    if weights.suffix.lower() == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            return set(handle.keys())
    checkpoint = _torch_checkpoint(weights)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return set(timm.models.clean_state_dict(checkpoint)) if isinstance(checkpoint, dict) else set()


def _torch_checkpoint(weights: Path) -> object:
    """A torch checkpoint loaded without running pickled code, memory-mapped when possible."""
    try:  # mmap avoids reading every tensor just to list the names
        return torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from the legacy (non-zip) torch format cannot be mapped
        return torch.load(weights, map_location="cpu", weights_only=True)


def _freeze_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """Leave only the classifier trainable and make BatchNorm statistics fixed."""
    for parameter in model.parameters():
        parameter.requires_grad = False
    classifier_parameters = list(model.get_classifier().parameters())
    if not classifier_parameters:
        raise UserError(
            f"Backbone {type(model).__name__} has no trainable classifier for finetune='head'; "
            "use finetune='full'."
        )
    for parameter in classifier_parameters:
        parameter.requires_grad = True
    return freeze_batch_norm_2d(model)
