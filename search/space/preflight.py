"""What a space needs from this machine, checked before its study starts.

Every backbone the space can pick exists in timm, every weights file it can ask for loads into
its backbone, and every image decodes: each failure is one clear error in seconds, before the
study is created, instead of a failed first trial.
"""

from __future__ import annotations

from typing import Any

from search.space.spacefile import Space
from trainer.cache import cached_images
from trainer.config import weights_for
from trainer.models import check_backbone, check_pretrained, check_weights_file
from trainer.sources import ImageTable


def _candidates(space: Space, name: str) -> tuple[Any, ...]:
    """The values of config field ``name`` that the space can pick (both bounds of a range)."""
    searched = space.searched.get(name)
    return searched.values_to_check() if searched else (getattr(space.config({}), name),)


def check_backbones(space: Space) -> None:
    """Every backbone the space can pick exists in timm (fail before any training)."""
    for name in _candidates(space, "backbone"):
        check_backbone(name, str(space.path))


def check_weights(space: Space) -> None:
    """The pretrained weights the space can ask for can be had (fail before any training).

    Each backbone is built once from each weights file it can get, as its trials would build
    it: a missing, corrupt or foreign file is refused before the study exists.
    """
    searched = space.searched.get("pretrained")
    options = searched.values_to_check() if searched else (space.fixed.get("pretrained", False),)
    pairs = {(b, weights_for(p, b)) for b in space.backbones() for p in options}
    for backbone, weights in sorted(pairs, key=str):
        check_pretrained(backbone, weights)
        if isinstance(weights, str):
            check_weights_file(backbone, weights)


def check_images(space: Space, table: ImageTable, *, progress: bool) -> None:
    """Every image decodes: found before the study is created, not in its first trial.

    This builds the image cache at the smallest size the space can pick (trials reuse it) and
    reports every unreadable file at once.

    Raises:
        DataError: Some images cannot be read.
    """
    cached_images(table, min(_candidates(space, "image_size")), progress=progress)
