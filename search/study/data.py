"""The study's images and fixed fold splits, decoded once per image size for every trial."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.cache import CachedImages, cached_images
from trainer.loop import Split
from trainer.sources import ImageTable


@dataclass
class StudyData:
    """The study's images, decoded once per image size and shared by every trial."""

    table: ImageTable
    splits: Sequence[Split]
    splits_id: str = ""
    cache_dir: Path | None = None
    progress: bool = True
    _by_size: dict[int, CachedImages] = field(default_factory=dict)

    def images(self, size: int) -> CachedImages:
        """The cached images at ``size`` (built on first use, then reused)."""
        if size not in self._by_size:
            self._by_size[size] = cached_images(
                self.table, size, directory=self.cache_dir, progress=self.progress
            )
        return self._by_size[size]
