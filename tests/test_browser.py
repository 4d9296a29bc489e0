"""The address hpo prints opens, in a real browser, the study's trials best first with their score.

A small study (complete, failed, pruned and complete trials) is tracked into a local store, the
MLflow UI is started on loopback for that store, and headless Chromium (Debian's chromium and
chromium-driver, see .ci/install-browser.sh) opens the address `hpo ui` prints. Without a click,
the best trial must be the first row, with its score and searched parameters on screen (not
under the assistant panel MLflow opens on a first visit). The screenshot is saved to
test-artifacts/mlflow-runs.png.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest

from search.context import RunRequest
from search.engine.run import run
from search.tracking.server import free_port, start_server, stop_server
from search.tracking.tracker import tracking_hook
from search.tracking.ui_address import VIEW_TAG, runs_address
from tests.support.tracking import Saboteur, quiet, write_space

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "mlflow-runs.png"
WAIT = 120  # seconds; the UI's first load is slow on a busy two-core machine
ARGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
    "--disable-background-networking --disable-component-update --disable-sync --no-first-run "
    "--window-size=1600,900"
)
SCORE, LR = "metrics.`cv_optimistic_mean`", "params.`lr`"


def require_browser() -> None:
    """Skip without chromium, except under CI, where a missing browser is a failure."""
    if CHROMIUM.exists() and DRIVER.exists():
        return
    message = f"needs {CHROMIUM} and {DRIVER}: run .ci/install-browser.sh"
    if os.environ.get("CI"):
        pytest.fail(f"The browser test {message} (CI is set, so it may not be skipped).")
    pytest.skip(message)


@pytest.fixture
def driver(tmp_path) -> Iterator:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in [*ARGS.split(), f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    browser = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


@dataclass
class Shown:
    """The address of a tracked study's trials in a running UI, and its best trial."""

    address: str
    best: optuna.trial.FrozenTrial


@pytest.fixture
def ui(tmp_path) -> Iterator[Shown]:
    require_browser()
    space = write_space(Path.cwd(), "digits-search")
    request = RunRequest(space=str(space), trials=3, progress=False, export=False)
    run(request, console=quiet(), hooks=[tracking_hook, lambda _: Saboteur()])
    store = mlflow.get_tracking_uri()
    experiment = mlflow.MlflowClient(store).get_experiment_by_name("digits-search")
    assert VIEW_TAG in experiment.tags
    storage = f"sqlite:///{Path.cwd() / 'studies' / 'digits-search' / 'study.db'}"
    best = optuna.load_study(study_name="digits-search", storage=storage).best_trial
    port = free_port()
    server = start_server(store, port=port, log=tmp_path / "mlflow-ui.log")
    try:
        yield Shown(runs_address(f"http://127.0.0.1:{port}", experiment.experiment_id), best)
    finally:
        stop_server(server)


def test_the_printed_address_shows_the_best_trial_first_with_its_score(ui, driver):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(ui.address)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    best = f"trial-{ui.best.number}"
    try:
        WebDriverWait(driver, WAIT).until(lambda d: _on_screen(d, 0, "attributes.`Run Name`"))
        name, score, lr = (_on_screen(driver, 0, column) for column in ("Run Name", SCORE, LR))
    except Exception:
        driver.save_screenshot(str(SCREENSHOT.with_name("mlflow-runs-failed.png")))
        raise
    assert driver.save_screenshot(str(SCREENSHOT))
    assert name is not None and name.endswith(best), name  # the colour swatch comes first
    assert score is not None and float(score) == pytest.approx(ui.best.value, abs=1e-3)
    assert lr is not None and float(lr) == pytest.approx(ui.best.params["lr"], rel=1e-3)
    assert _on_screen(driver, 3, "attributes.`Run Name`")  # every trial is listed


def _on_screen(driver, row: int, column: str) -> str | None:
    """The text of a table cell if it is visible in the window (not scrolled off or covered).

    ``column`` is the grid's column id (``metrics.`cv_optimistic_mean```) or ``Run Name``.
    """
    column = "attributes.`Run Name`" if column == "Run Name" else column
    script = """
        const [row, column] = arguments;
        const cells = document.querySelectorAll(`[role=row][row-index="${row}"] [col-id]`);
        const cell = Array.from(cells).find(c => c.getAttribute('col-id') === column);
        if (!cell) return null;
        const box = cell.getBoundingClientRect();
        const [x, y] = [box.left + box.width / 2, box.top + box.height / 2];
        if (x < 0 || y < 0 || x > window.innerWidth || y > window.innerHeight) return null;
        const top = document.elementFromPoint(x, y);
        return top && cell.contains(top) ? cell.innerText.trim() : null;
    """
    return driver.execute_script(script, row, column)
