"""How tracking talks to MLflow without ever stopping a study: one guard, one writer thread.

Tracking only observes: the first MLflow error (a server that stopped answering, a full disk)
turns tracking off for the rest of this process with one line on stderr (`Guard`), and the study
goes on. Everything after a trial's run is created runs in order on one background thread
(`Writer`), so training never waits on the store. This module imports nothing heavy: `hpo ui`
and the CLI use `prepare_mlflow` before MLflow is imported.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow.entities import Metric

# MLflow retries a failed HTTP request 7 times with a 2 s backoff factor and waits up to 120 s
# for an answer: minutes per call while a tracking server is down. With these a refused
# connection gives up in about 3 s and a hung server in about a minute (once: tracking then
# stops), while a slow artifact upload still has 20 s to be answered; values the user set win.
_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # read when mlflow is imported: no INFO lines per study
}
_BATCH = 100  # MLflow's limit of params per log_batch call
_SYMPTOMS = ("Connection refused", "Read timed out", "timed out", "Max retries exceeded")

T = TypeVar("T")


def prepare_mlflow() -> None:
    """Set hpo's defaults for MLflow's HTTP retries and logging (values the user set win)."""
    for name, value in _MLFLOW_ENV.items():
        os.environ.setdefault(name, value)


class Guard:
    """Runs MLflow calls; the first failure turns tracking off with one line on stderr."""

    def __init__(self, uri: str) -> None:
        self.uri, self.alive = uri, True
        # One thread at a time: the warnings filters that catch_warnings swaps are process-wide.
        self.lock = threading.RLock()

    def __call__(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``call(...)``; None once tracking is off, or if the call raises (turning it off)."""
        if not self.alive:
            return None
        try:
            with self.lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MLflow's deprecation and store notices
                return call(*args, **kwargs)
        except Exception as err:  # whatever went wrong, tracking must never end a trial
            self.alive = False
            print(stopped_message(self.uri, err), file=sys.stderr, flush=True)
            return None


def stopped_message(uri: str, err: Exception) -> str:
    """The one line printed when tracking stops, with the gist of ``err``."""
    text = " ".join(str(err).split()) or type(err).__name__
    reason = next((s.lower() for s in _SYMPTOMS if s in text), text)
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return f"MLflow tracking at {uri} stopped answering ({reason}); the study goes on without it."


class Writer:
    """Runs tracking work in order on one background thread, so training never waits on it.

    Everything after a trial's run is created (params, per-epoch batches, fold runs, files and
    figures) is queued here; `drain` waits for the queue, e.g. before the process ends.
    """

    def __init__(self, guard: Guard) -> None:
        self.guard, self.queue = guard, queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, daemon=True, name="hpo-mlflow")
        self.thread.start()

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` after everything submitted before it."""
        self.queue.put((call, args))

    def drain(self) -> None:
        """Wait until everything submitted so far has run."""
        done = threading.Event()
        self.queue.put((None, (done,)))
        done.wait()

    def _work(self) -> None:
        while True:
            call, args = self.queue.get()
            if call is None:  # a drain marker: set it even when tracking is off
                args[0].set()
            else:
                self.guard(call, *args)  # an error turns tracking off; the thread goes on


def metrics(values: dict[str, Any], *, step: int = 0) -> list[Metric]:
    """MLflow metrics of ``values`` stamped now (None values are left out)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(k, float(v), stamp, step) for k, v in values.items() if v is not None]


def chunks(items: Sequence[T], *, size: int = _BATCH) -> Iterable[Sequence[T]]:
    """``items`` in slices MLflow's log_batch accepts (at least one, maybe empty)."""
    return (items[i : i + size] for i in range(0, max(len(items), 1), size))
