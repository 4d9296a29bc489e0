"""The package's one count of usable CPU cores.

It lives apart from `trainer.device` because that module imports torch: the image cache's decode
workers and `hpo data` need a core count but not torch (importing it costs about 2 s per process).
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may use.

    Honours affinity masks (taskset, Slurm, container CPU sets), which `os.cpu_count` ignores.
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1
