"""Browser fixtures: Debian's Chromium driven by Playwright (its own browser download can't run
here, so `executable_path`), against the `gateway` fixture's server. Each test can save
screenshots under test-output/screenshots/ (docs/screenshots/ holds the README's copies)."""

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-output" / "screenshots"
# What Chromium may not do on this closed network, and must not need to when run as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module. Playwright's sync API keeps an event loop running on the
    test's thread while it lives, which breaks async_to_sync in tests that follow; so it lives
    only as long as a module, and modules with browser tests hold nothing else."""
    from playwright.sync_api import sync_playwright

    # Django's ORM guard mistakes that loop for async code; the test's queries are plain sync.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)  # fmt: skip
        yield chromium
        chromium.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@contextmanager
def open_page(browser, base_url: str, *, width: int = 1280, height: int = 860,
              timeout_ms: int = 15_000):  # fmt: skip
    """A page in a fresh context (no cookies) on `base_url`; fails the test on any JavaScript
    error the page raised."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height},
                                  accept_downloads=True)  # fmt: skip
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser, gateway):
    with open_page(browser, gateway.url) as page:
        yield page


def screenshot(page, name: str, *, hide=()) -> Path:
    """Save the whole page as test-output/screenshots/<name>.png, with the `hide` locators
    (secrets: the copies go into docs/) painted over."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True, mask=list(hide), mask_color="#9aa5b1")
    return path


def sign_in(page, username: str, password: str, *, next_path: str = "/portal/") -> None:
    page.goto(f"/portal/login/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # from npm (package.json devDependencies)


def assert_accessible(page) -> None:
    """No serious or critical WCAG 2 A/AA violation on the page, as axe-core finds them."""
    # Evaluated rather than added as a <script>: the pages' Content-Security-Policy refuses
    # inline scripts (which add_script_tag makes), as it should.
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})")
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:3]]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, f"{page.url}: {serious}"
