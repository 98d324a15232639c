"""The web page in headless Chromium: submit a goal, watch progress reach 100%, read a tutorial."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from roadmap_testkit import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Never download a browser: use the system Chromium, headless, without network side traffic.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright_sync.sync_playwright() as driver:
        instance = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def test_submit_a_goal_watch_progress_reach_100_and_open_a_tutorial(
    stack: Stack, browser: object
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(stack.base_url + "/")
        page.wait_for_selector("#health-dot.ok", timeout=15_000)

        # Bad input is explained next to the field, and nothing is submitted.
        page.fill("#goal", "12")
        page.click("#submit")
        page.wait_for_selector("#error-goal:not(:empty)")
        assert "at least 3 characters" in page.inner_text("#error-goal")

        page.fill("#goal", "Learn TypeScript for web apps")
        page.select_option("#level", "intermediate")
        page.fill("#weekly_hours", "8")
        page.click("#submit")
        page.wait_for_selector("#roadmap:not(.hidden)")
        page.wait_for_function(
            "document.querySelector('#progress-percent').textContent === '100%'", timeout=60_000
        )
        page.wait_for_selector("#rm-status.completed", timeout=15_000)
        page.wait_for_function(
            "document.querySelectorAll('.concept.done').length === document.querySelectorAll('.concept').length"
        )
        assert page.inner_text("#rm-title") == "TypeScript roadmap for web apps"
        stage_bars = page.locator("#stage-bars li")
        assert stage_bars.count() == 4
        done = page.locator(".concept.done")
        assert done.count() == page.locator(".concept").count() >= 20
        page.screenshot(
            path=str(ARTIFACTS / "roadmap-completed.png"), full_page=True, animations="disabled"
        )

        first = done.first
        title = first.locator(".name").inner_text()
        first.click()
        dialog = page.locator("#concept-dialog")
        dialog.wait_for(state="visible")
        assert page.inner_text("#dlg-title") == title
        assert "Why it matters" in page.inner_text("#tab-tutorial")
        page.screenshot(path=str(ARTIFACTS / "tutorial.png"), animations="disabled")

        page.click(".tab[data-tab=quiz]")
        page.locator("#tab-quiz .question").first.locator(".option").first.click()
        assert page.locator("#tab-quiz .option.right").count() >= 1
        page.click(".tab[data-tab=resources]")
        assert page.locator("#tab-resources a").count() == 3
        page.click("#dlg-close")
        dialog.wait_for(state="hidden")
        assert errors == []
    finally:
        page.close()
    for name in ("roadmap-completed.png", "tutorial.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000


def test_review_is_approved_from_the_page(stack: Stack, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    try:
        page.goto(stack.base_url + "/")
        page.fill("#goal", "Learn Swift")
        page.check("#review")
        page.click("#submit")
        page.wait_for_selector("#review-panel:not(.hidden)", timeout=30_000)
        page.click("#reject")  # rejecting needs feedback
        assert "Say what should change" in page.inner_text("#review-error")
        page.click("#approve")
        page.wait_for_function(
            "document.querySelector('#progress-percent').textContent === '100%'", timeout=60_000
        )
        page.wait_for_selector("#rm-status.completed", timeout=15_000)
        assert page.locator("#review-panel.hidden").count() == 1
    finally:
        page.close()
