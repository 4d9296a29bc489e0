"""CPU, memory, disk, network and GPU utilisation of a run, through MLflow's own monitor.

MLflow's `SystemMetricsMonitor` samples every 10 s (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``)
and logs ``system/...`` metrics to one run; it needs psutil, and nvidia-ml-py for NVIDIA GPUs.
hpo's runs are created through `MlflowClient`, never `mlflow.start_run(log_system_metrics=True)`
(which raises without psutil and leaves its run RUNNING): a monitor is attached to a run that
exists, and without psutil there is simply none. ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``
turns them off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

_SWITCH = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


def available() -> bool:
    """Whether system metrics can be logged: psutil is installed and the user did not opt out."""
    if os.environ.get(_SWITCH, "").strip().lower() in ("false", "0", "no"):
        return False
    if importlib.util.find_spec("psutil") is None:
        _say_missing()
        return False
    return True


def start_monitor(run_id: str, uri: str, *, resume: bool = False) -> SystemMetricsMonitor | None:
    """A running monitor that logs this machine's utilisation to ``run_id``, or None.

    Never raises: without psutil, or if the monitor cannot start, the run goes on without.

    Args:
        run_id: The run to log ``system/...`` metrics to.
        uri: The tracking store.
        resume: Continue the steps of metrics the run already has (a resumed study run).
    """
    if not available():
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
        monitor.start()
    except Exception:  # a GPU library that fails to load, a store that does not answer
        return None
    return monitor


def stop_monitor(monitor: SystemMetricsMonitor | None) -> None:
    """Stop ``monitor`` and write what it sampled (before its run is closed)."""
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception:  # its last batch is lost; the run itself is unaffected
        return


@cache  # once per process
def _say_missing() -> None:
    print(
        "MLflow system metrics are off: psutil is not installed (pip install psutil).",
        file=sys.stderr,
    )
