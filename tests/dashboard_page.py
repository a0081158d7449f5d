"""The dashboard in a real browser, for the unit and integration tests: Debian's Chromium, headless,
driven by Playwright, reading what a person would read on the page.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``executable_path``).
Its sync API blocks the thread it runs on while it waits for the browser, and the unit tests' nodes
run on the test's own thread (gevent), so the browser lives in a thread of its own and every call
goes through ``DashboardBrowser.run``, which waits without blocking gevent.

Screenshots go to ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gevent.threadpool import ThreadPool

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PAGE_TIMEOUT_MS = 10_000

T = TypeVar("T")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


class DashboardBrowser:
    """One headless Chromium page, used from the test's thread through ``run``.

    ``console_errors`` collects every console error and uncaught exception of the page.
    """

    def __init__(self) -> None:
        self._pool = ThreadPool(1)  # one thread: Playwright objects belong to the thread that made them
        self._playwright: Any = None
        self._browser: Any = None
        self.page: Any = None
        self.console_errors: list[str] = []

    def run(self, action: Callable[[Any], T]) -> T:
        """``action(page)`` in the browser's thread; its result, or its exception raised here."""
        result: T = self._pool.apply(action, (self.page,))
        return result

    def start(self, *, width: int = 1280, height: int = 1000, dark: bool = False) -> None:
        def launch(_: Any) -> None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            self._open_page(width, height, dark)

        self.run(launch)

    def _open_page(self, width: int, height: int, dark: bool) -> None:
        self.page = self._browser.new_page(
            viewport={"width": width, "height": height}, color_scheme="dark" if dark else "light"
        )
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page.on("console", lambda message: self._console(message.type, message.text))
        self.page.on("pageerror", lambda error: self.console_errors.append(f"uncaught: {error}"))

    def _console(self, kind: str, text: str) -> None:
        if kind == "error":
            self.console_errors.append(text)

    def new_page(self, *, width: int, height: int, dark: bool = False) -> None:
        """Replace the page with a new one of this size and colour scheme."""

        def reopen(page: Any) -> None:
            page.close()
            self._open_page(width, height, dark)

        self.run(reopen)

    def close(self) -> None:
        def stop(_: Any) -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            self.run(stop)
        finally:
            self._pool.kill()

    # --- what a person reads ----------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Load the dashboard and wait until it has drawn the cluster once."""
        self.run(lambda page: (page.goto(url), page.wait_for_selector("#nodes .card")))

    def node_states(self) -> dict[str, str]:
        """Each node card's id and the state its badge shows (``up``, ``suspect``, ``down``)."""
        script = """() => Object.fromEntries([...document.querySelectorAll('#nodes .card')].map(
            (card) => [card.dataset.node, card.querySelector('[data-field=state]').innerText.trim().toLowerCase()]))"""
        states: dict[str, str] = self.run(lambda page: page.evaluate(script))
        return states

    def key_counts(self) -> dict[str, int]:
        """Each node card's "Keys" figure, as a number."""
        script = """() => Object.fromEntries([...document.querySelectorAll('#nodes .card')]
            .filter((card) => card.querySelector('[data-field=keys]'))
            .map((card) => [card.dataset.node, card.querySelector('[data-field=keys]').innerText]))"""
        shown: dict[str, str] = self.run(lambda page: page.evaluate(script))
        return {node: int(re.sub(r"\D", "", text)) for node, text in shown.items()}

    def served_by(self) -> str:
        text: str = self.run(lambda page: page.inner_text("#source"))
        return text

    def look_up(self, key: str) -> tuple[list[str], dict[str, str]]:
        """Type ``key`` in the lookup form and submit it; the preference list shown, and what each
        replica's row says it holds."""

        def look(page: Any) -> tuple[str, dict[str, str]]:
            page.fill("#lookup-key", key)
            page.click("#lookup-form button")
            page.wait_for_selector(f"#lookup-result table[data-key='{key}']")
            rows = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('#lookup-result tbody tr')].map(
                    (row) => [row.dataset.node, row.querySelector('[data-field=holds]').innerText]))"""
            )
            return page.inner_text("#lookup-result [data-field=preference-list]"), rows

        preference, rows = self.run(look)
        return [node.strip() for node in preference.split("→")], rows

    def overflows_horizontally(self) -> bool:
        """Whether the page is wider than the window (a phone would have to scroll sideways)."""
        wider: bool = self.run(
            lambda page: page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth + 1")
        )
        return wider

    def background_luminance(self) -> float:
        """The page background's relative luminance, 0 (black) to 1 (white)."""
        colour: str = self.run(lambda page: page.evaluate("() => getComputedStyle(document.body).backgroundColor"))
        red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", colour)[:3])
        return 0.2126 * red + 0.7152 * green + 0.0722 * blue

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.run(lambda page: page.screenshot(path=str(path), full_page=True))
        return path


@contextmanager
def dashboard_browser() -> Iterator[DashboardBrowser]:
    browser = DashboardBrowser()
    try:
        browser.start()
        yield browser
    finally:
        browser.close()
