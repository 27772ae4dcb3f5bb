"""The dashboard page in a real browser: Debian's chromium, driven by Playwright, loads `/`
over seeded data; the charts must have rendered (SVG shapes carrying data), the execution page
must draw its timeline, and nothing may log a console error. Saves a screenshot (to
docs/dashboard.png with TURNSTREAM_SCREENSHOT=docs/dashboard.png)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.serving import running_server
from turnstream.demo import Spec, fill

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The README's screenshot is refreshed on request (TURNSTREAM_SCREENSHOT=docs/dashboard.png);
# otherwise a test run leaves the working tree as it found it.
SCREENSHOT_ENV = "TURNSTREAM_SCREENSHOT"
CHARTS = ("runs", "success", "failures", "cost", "tokens", "durations", "tools")


async def test_dashboard_renders_in_chromium(sqlite_url: str, tmp_path: Path) -> None:
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: apt-get install chromium (.ci/run does)", pytrace=False)
    end = dt.datetime.now(dt.UTC)
    await fill(sqlite_url, Spec(600, end - dt.timedelta(days=21), end, seed=21))
    async with running_server(sqlite_url) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(f"http://127.0.0.1:{server.http_port}/")
            await page.wait_for_selector("#runs svg rect[data-value]")
            for chart in CHARTS:
                shapes = page.locator(f"#{chart} svg [data-value]")
                assert await shapes.count() > 0, f"chart {chart} drew nothing"
            values = await page.locator("#runs svg rect[data-value]").evaluate_all(
                "rs => rs.map(r => Number(r.dataset.value))"
            )
            assert sum(values) >= 550  # every run of the 21 days, minus the ones cut by 00:00
            assert await page.locator("#workflows tbody tr").count() >= 5
            assert await page.locator("#cards .card").count() == 8
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(screenshot), full_page=True)

            await page.select_option("select[name=granularity]", "week")
            await page.click("#filters button")
            await page.wait_for_function(
                "document.querySelectorAll('#runs svg rect[data-value]').length <= 16"
            )
            await page.locator("#recent a").first.click()
            await page.wait_for_selector("#timeline svg rect[data-value]")
            assert await page.locator("#ex-turns tbody tr").count() >= 1
            assert problems == []
        finally:
            await browser.close()


async def test_the_dashboard_sends_the_key_typed_into_it(sqlite_url: str) -> None:
    """Once keys exist the page needs one: it says so, takes it in its key field, sends it as a
    Bearer token and remembers it (localStorage) across reloads."""
    from tests.integration.test_auth_doors import make_key

    end = dt.datetime.now(dt.UTC)
    await fill(sqlite_url, Spec(50, end - dt.timedelta(days=5), end, seed=3))
    # The demo rows are tenant `default`; a key of that tenant reads them.
    key, _ = make_key(sqlite_url, "default", "read")
    async with running_server(sqlite_url) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.http_port}/")
            await page.wait_for_selector("#error:not([hidden])")
            assert "needs an API key" in await page.locator("#error").inner_text()
            await page.fill("#apikey", key)
            await page.dispatch_event("#apikey", "change")
            await page.click("#filters button")
            await page.wait_for_selector("#runs svg rect[data-value]")
            assert await page.locator("#error").is_hidden()
            await page.reload()
            await page.wait_for_selector("#runs svg rect[data-value]")
            assert await page.input_value("#apikey") == key
        finally:
            await browser.close()
