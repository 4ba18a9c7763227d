"""Headless Chromium driven by Selenium, for the tests that use the Airflow UI as a person would.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``.ci/run`` installs both).
Selenium is given the driver's path, so its Selenium Manager never tries to download one.
Without them a test skips and says how to install them; under CI (``$CI`` set) it fails instead.

Screenshots go to ``$MLOPS_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the project root,
git-ignored): one per step on success, and the page as it was when a step failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from tooling import require_executable

log = logging.getLogger(__name__)

# True when the element, an inline <svg> or an <img> (or a box holding one), shows a drawn picture.
PLOT_IS_DRAWN = """
const el = arguments[0];
const box = el.getBoundingClientRect();
if (box.width < 50 || box.height < 50) return false;
const images = el.matches('img') ? [el] : [...el.querySelectorAll('img')];
const svgs = el.matches('svg') ? [el] : [...el.querySelectorAll('svg')];
const marks = 'path, polyline, line, circle, rect, use, image';
return images.some(i => i.complete && i.naturalWidth > 0) || svgs.some(s => s.querySelector(marks) !== null);
"""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "install Debian's browser and its driver: apt-get install -y chromium chromium-driver (.ci/run does)"
# No network beyond the stack: nothing that phones home, updates itself or syncs (docs: ENVIRONMENT).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# The size of the README's screenshot: Airflow's nav beside the Models page, down to the versions table.
WINDOW_SIZE = (1280, 1360)


def artifacts_dir() -> Path:
    """Where screenshots go: ``$MLOPS_TEST_ARTIFACTS``, else ``test-artifacts/`` in the project root."""
    folder = Path(os.environ.get("MLOPS_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def headless_chromium() -> Iterator[WebDriver]:
    """A headless Chromium session; skips (fails under CI) when chromium or chromedriver is missing."""
    binary = require_executable("chromium", INSTALL_HINT)
    driver_path = require_executable("chromedriver", INSTALL_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size={},{}".format(*WINDOW_SIZE))
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save what the window shows (the whole viewport, whichever frame is selected) as ``<name>.png``."""
    path = artifacts_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    log.info("screenshot %s", path)
    return path


@contextmanager
def screenshot_on_failure(driver: WebDriver, name: str) -> Iterator[None]:
    """On any failure inside the block, keep the window and the selected document's HTML as ``<name>-failed.*``."""
    try:
        yield
    except BaseException:
        try:
            screenshot(driver, f"{name}-failed")
            (artifacts_dir() / f"{name}-failed.html").write_text(driver.page_source)
        except WebDriverException:
            log.exception("could not save the failure screenshot of %s", name)
        raise


class AirflowUI:
    """The few things the tests do in Airflow's own UI, through its real pages."""

    def __init__(self, driver: WebDriver, base_url: str, timeout: float = 60) -> None:
        self.driver = driver
        self.base_url = base_url
        self.wait = WebDriverWait(driver, timeout)

    def log_in(self, username: str, password: str) -> None:
        """Sign in through the auth manager's login form, as a person does, and wait for the home page."""
        self.driver.get(f"{self.base_url}/")
        self.wait.until(expected_conditions.visibility_of_element_located((By.NAME, "username"))).send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait.until(lambda d: "/auth/login" not in d.current_url, "the login form did not let admin in")
        self.wait.until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "a[aria-label='Dags']")),
            "the Airflow UI did not show its nav after login",
        )

    def nav_entry(self, name: str) -> WebElement:
        """The nav entry ``name``: a top-level nav link, or an item of the Plugins menu."""
        top_level = (By.CSS_SELECTOR, f"a[aria-label='{name}']")
        entries = self.driver.find_elements(*top_level)
        if not entries:
            # More than a few plugin views are grouped under a "Plugins" menu.
            self.driver.find_element(By.CSS_SELECTOR, "button[aria-label='Plugins']").click()
            return self.wait.until(
                expected_conditions.element_to_be_clickable(
                    (By.XPATH, f"//*[@role='menuitem'][normalize-space()='{name}']")
                ),
                f"no nav entry named {name!r}",
            )
        return entries[0]

    def enter_plugin_frame(self) -> None:
        """Select the iframe in which the UI shows a plugin's external view."""
        self.wait.until(
            expected_conditions.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")),
            "the UI showed no plugin iframe",
        )

    def visible(self, css: str) -> WebElement:
        """The element ``css`` of the selected document, once it is shown."""
        return self.wait.until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)), f"{css} was not shown"
        )

    def link_to(self, css: str, path_suffix: str) -> WebElement:
        """The first link matching ``css`` whose (resolved, unquoted) URL path ends with ``path_suffix``."""
        seen: list[str] = []

        def find(driver: WebDriver) -> WebElement | bool:
            seen[:] = [a.get_attribute("href") or "" for a in driver.find_elements(By.CSS_SELECTOR, css)]
            for link, href in zip(driver.find_elements(By.CSS_SELECTOR, css), seen, strict=False):
                if unquote(urlsplit(href).path).rstrip("/").endswith(path_suffix):
                    return link
            return False

        return self.wait.until(find, f"no {css} links to ...{path_suffix}; the page has {seen}")

    def assert_plot_drawn(self, css: str) -> None:
        """``css`` is an inline SVG or a loaded image with something drawn in it, not an empty box."""
        plot = self.visible(css)
        self.wait.until(
            lambda driver: driver.execute_script(PLOT_IS_DRAWN, plot),
            f"{css} shows no plot: {(plot.get_attribute('outerHTML') or '')[:300]}",
        )

    def wait_for_run_page(self, run_page: str, run_id: str) -> None:
        """The Airflow UI shows the run page itself, with the run's header, in the top window.

        The UI shows a plugin's page in a sandboxed iframe (no ``allow-top-navigation``), so a plain
        link there opens the whole Airflow UI again inside the iframe, under ``/plugin/...``.
        """
        self.driver.switch_to.default_content()

        def at_run_page(driver: WebDriver) -> bool:
            path = unquote(urlsplit(driver.current_url).path)
            if path.startswith("/plugin/") and path.endswith(run_page):
                raise AssertionError(
                    f"the run link opened the Airflow UI inside the plugin's iframe ({driver.current_url}), "
                    "not the run page: the UI's iframe sandbox blocks target=_top, so the page has to route "
                    "the top window itself (top.history.pushState + a popstate event)"
                )
            return path == run_page

        self.wait.until(at_run_page, f"the run link did not open {run_page} (at {self.driver.current_url})")
        self.wait.until(
            expected_conditions.visibility_of_element_located((By.XPATH, f"//h2[normalize-space()='{run_id}']")),
            f"the run page did not show run {run_id}; was it found?",
        )
