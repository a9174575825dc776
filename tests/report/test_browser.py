"""Open the generated report in a real headless Chromium, as a person would, with the network cut off.

Checks that every plot rendered (plotly's SVG is in the page), that the browser logged no error and fetched
nothing but the file itself, and saves screenshots into ``$RLHFCTL_TEST_ARTIFACTS`` (or the test's tmp folder;
the path is printed). Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them when
run as root): in CI or as root a missing browser fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from rlhfctl.report.html import render_html
from rlhfctl.report.run_data import load_runs

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
RENDER_TIMEOUT_S = 90  # generous: CI machines may be busy
OFFLINE_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1400,1000")


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; fails in CI or as root, skips on a developer machine without them."""
    browser = next((path for name in BROWSER_NAMES if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401 - the test extra installs it
        selenium_missing = False
    except ImportError:
        selenium_missing = True
    missing = [what for what, absent in (("chromium", browser is None), ("chromedriver", driver is None),
                                         ("the selenium package", selenium_missing)) if absent]
    if missing:
        reason = (f"{' and '.join(missing)} not found: bash scripts/test.sh installs Debian's chromium and "
                  "chromium-driver (as root) and the test extra (pip install -e '.[test]')")
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason + "; skipped on this developer machine (not root, not CI)")
    return browser, driver  # type: ignore[return-value]


@pytest.fixture
def artifacts(tmp_path: Path, capsys) -> Path:
    folder = Path(os.environ.get("RLHFCTL_TEST_ARTIFACTS", tmp_path / "artifacts")) / "report-browser"
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nrlhfctl report browser test: screenshots and page in {folder}")
    return folder


@pytest.fixture
def chrome(tmp_path: Path):
    browser, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*OFFLINE_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:  # an explicit driver path: Selenium Manager never tries to download one
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as error:  # a browser that cannot start is a failure, never a skip
        pytest.fail(f"headless chromium did not start ({browser}, {driver_path}): {error}")
    driver.set_page_load_timeout(RENDER_TIMEOUT_S)
    yield driver
    driver.quit()


def test_the_report_renders_every_plot_offline_without_errors(make_run, artifacts: Path, chrome) -> None:
    runs = load_runs([make_run("ppo-slow", steps=120, learning_rate=1e-4),
                      make_run("ppo-hot", steps=120, learning_rate=3e-4, kl_scale=0.5)])  # raises a KL alarm
    page = artifacts / "report.html"
    page.write_text(render_html(runs), encoding="utf-8")

    chrome.get(page.as_uri())
    expected = int(chrome.execute_script("return document.body.dataset.plotsExpected"))
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    rendered = None
    while time.monotonic() < deadline and rendered is None:
        rendered = chrome.execute_script("return document.body.dataset.plotsRendered || null")
        time.sleep(0.2)
    chrome.save_screenshot(str(artifacts / "report-top.png"))
    console = chrome.get_log("browser")
    assert rendered is not None, f"plots did not finish rendering in {RENDER_TIMEOUT_S} s; console: {console}"
    assert expected >= 15 and int(rendered) == expected  # 13 metric charts, frontier, timeline

    counts = chrome.execute_script("""return {
        plots: document.querySelectorAll('.plot.js-plotly-plot').length,
        svgs: document.querySelectorAll('.plot .main-svg').length,
        curves: document.querySelectorAll('.plot .scatterlayer .trace').length,
        alarms: document.querySelectorAll('#health td.sev-error').length,
        samples: document.querySelectorAll('#samples details').length};""")
    assert counts["plots"] == expected and counts["svgs"] >= expected and counts["curves"] >= 2 * expected
    assert counts["alarms"] >= 1 and counts["samples"] >= 2 * 12
    errors = [entry for entry in console if entry["level"] == "SEVERE"]
    assert errors == [], f"the browser logged errors: {errors}"

    requested = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
                 for entry in chrome.get_log("performance")
                 if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"]
    assert page.as_uri() in requested
    fetched = [url for url in requested if not url.startswith(("file:", "data:", "blob:", "chrome:", "about:"))]
    assert fetched == [], f"the page fetched from the network: {fetched}"  # chrome:// is the browser's own UI

    height = chrome.execute_script("return document.body.scrollHeight")
    chrome.set_window_size(1400, min(height, 16_000))
    time.sleep(1.0)  # plotly's responsive resize
    chrome.save_screenshot(str(artifacts / "report-full.png"))
    for name in ("report-top.png", "report-full.png"):
        assert (artifacts / name).read_bytes().startswith(b"\x89PNG") and (artifacts / name).stat().st_size > 20_000
