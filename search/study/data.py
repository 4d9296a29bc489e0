"""The study's images and fixed fold splits, decoded once per image size for every trial."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from search.study.caches import record_use
from trainer.cache import CachedImages, cached_images
from trainer.sources import ImageTable
from trainer.types import Split


@dataclass
class StudyData:
    """The study's images, decoded once per image size and shared by every trial."""

    table: ImageTable
    splits: Sequence[Split]
    splits_id: str = ""
    cache_dir: Path | None = None
    progress: bool = True
    # The study's folder, where the caches it reads are recorded (see `search.study.caches`).
    folder: Path | None = None
    _by_size: dict[int, CachedImages] = field(default_factory=dict)

    def images(self, size: int) -> CachedImages:
        """The cached images at ``size`` (built on first use, then reused)."""
        if size not in self._by_size:
            cached = cached_images(
                self.table, size, directory=self.cache_dir, progress=self.progress
            )
            if self.folder is not None and cached.path is not None:
                source, count = self.table.source, len(self.table)
                record_use(self.folder, cached.path, source=source, size=size, images=count)
            self._by_size[size] = cached
        return self._by_size[size]
