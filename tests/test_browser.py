"""The MLflow UI in a real browser shows a study's trials and their metrics.

A small study (complete, failed, pruned and complete trials) is tracked into a local store, the
MLflow UI is started on loopback for that store, and headless Chromium (Debian's chromium and
chromium-driver, see .ci/install-browser.sh) opens the address `hpo ui` prints. The nested runs
are expanded and a metric and the trial-state tag are added as columns, as a user would; the
screenshot is saved to test-artifacts/mlflow-runs.png.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from search.context import RunRequest
from search.engine.run import run
from search.tracking.tracker import tracking_hook
from search.tracking.ui import free_port, runs_address, start_server, stop_server
from tests.search.tracking.test_tracking import Saboteur, quiet, write_space

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "mlflow-runs.png"
TRIALS = [f"trial-{n}" for n in range(4)]
WAIT = 120  # seconds; the UI's first load is slow on a busy two-core machine
ARGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
    "--disable-background-networking --disable-component-update --disable-sync --no-first-run "
    "--window-size=1600,900"
)


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


@pytest.fixture
def ui(tmp_path) -> Iterator[str]:
    """A tracked study in ./mlflow.db and the address of its runs table in a running UI."""
    require_browser()
    space = write_space(Path.cwd(), "digits-search")
    request = RunRequest(space=str(space), trials=3, progress=False, export=False)
    run(request, console=quiet(), hooks=[tracking_hook, lambda _: Saboteur()])
    store = mlflow.get_tracking_uri()
    experiment = mlflow.MlflowClient(store).get_experiment_by_name("digits-search")
    port = free_port()
    server = start_server(store, port=port, log=tmp_path / "mlflow-ui.log")
    try:
        yield runs_address(f"http://127.0.0.1:{port}", experiment.experiment_id)
    finally:
        stop_server(server)


def test_the_runs_table_shows_trials_and_a_metric_column(ui, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(ui)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    try:
        _show_trials(driver, WebDriverWait(driver, WAIT))
    except Exception:
        driver.save_screenshot(str(SCREENSHOT.with_name("mlflow-runs-failed.png")))
        raise
    headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "[role=columnheader]")]
    assert any("score_mean" in h for h in headers), headers
    page = driver.find_element(By.TAG_NAME, "body").text
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        assert state in page
    assert driver.save_screenshot(str(SCREENSHOT))


def _show_trials(driver, wait) -> None:
    """Expand the study run and add a metric and the state tag as columns, as a user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait.until(lambda d: _link(d, "digits-search"))
    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        close.click()  # the assistant panel would hide half of the table
    for column in ("score_mean", "optuna.state"):
        _add_column(driver, wait, column)
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    # Trials are nested under the study run, which is shown collapsed: its name cell has the
    # expand button.
    cell = "//a[normalize-space()='digits-search']/ancestor::div[contains(@class, 'ag-cell ')]"
    _click_when_shown(wait, f"{cell}//button[contains(@data-component-id, 'runnamecell')]")
    wait.until(lambda d: all(_link(d, name) for name in TRIALS))


def _link(driver, text: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, f"//a[normalize-space()='{text}']")
    return next((f for f in found if f.is_displayed()), None)


def _add_column(driver, wait, name: str) -> None:
    """Tick ``name`` in the Columns menu (MLflow 3 shows no metric or tag column by default)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    menu = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
    if not menu or not menu[0].is_displayed():
        columns = "//button[starts-with(normalize-space(), 'Columns')]"
        wait.until(lambda d: d.find_element(By.XPATH, columns)).click()
    search = wait.until(
        lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']")
    )
    search.send_keys(Keys.CONTROL, "a")  # clear() does not reach React's state
    search.send_keys(Keys.BACKSPACE)
    search.send_keys(name)
    # The match is listed inside its group (Metrics, Tags), which may be collapsed: open
    # whatever group is closed until the match's checkbox shows, then tick it.
    node = f"//div[contains(@class, 'tree-treenode')][normalize-space()='{name}']"
    box = f"{node}//span[contains(concat(' ', @class, ' '), ' du-bois-light-tree-checkbox ')]"
    wait.until(lambda d: _tick_opening_groups(d, box))


def _tick_opening_groups(driver, xpath: str) -> bool:
    """Click the displayed match of ``xpath``; if none shows yet, open every closed group."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        shown = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
        if shown:
            shown[0].click()
            return True
        for switch in driver.find_elements(By.CSS_SELECTOR, "[class*='tree-switcher_close']"):
            switch.click()
    except WebDriverException:  # stale or covered while React re-renders: try again
        pass
    return False


def _click_when_shown(wait, xpath: str) -> None:
    """Click the first displayed match, retrying while React re-renders it."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    def click(driver) -> bool:
        try:
            shown = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
            if shown:
                shown[0].click()
            return bool(shown)
        except WebDriverException:  # stale or covered for a moment: try again
            return False

    wait.until(click)
