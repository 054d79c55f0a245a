"""A real-browser test: the app started with its README command (`./dev app`), driven by headless Chromium.

One flow through all 7 pages: a tiny ddtree decode on Live decode, its round opened in the Tree explorer through the
page's own link, a quick profile on Cost model, a cost-weight slider moved with the keyboard in the Budget lab, a tiny
bench in the Speedup arena, the Runs table and a Learn round. Any Streamlit exception box, error message or page
JavaScript error fails the test, naming the page. Every page is saved as a full-page PNG in $DTREE_SCREENSHOT_DIR
(default: a pytest temporary folder).

Run it alone with ``./dev test -m browser``. Needs the ``playwright`` package and Debian's chromium (Playwright's own
browser download is not used); the test is skipped without them unless ``DTREE_REQUIRE_BROWSER=1`` (then it fails).
The app's trace store is a temporary SQLite file ($DTREE_STORE), so the user's runs are untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# sidebar title -> (screenshot name, the page's st.title)
PAGES = {
    "Live decode": ("1_live_decode", "Live decode"),
    "Tree explorer": ("2_tree_explorer", "Tree explorer"),
    "Cost model": ("3_cost_model", "Cost model"),
    "Budget lab": ("4_budget_lab", "Budget lab"),
    "Speedup arena": ("5_speedup_arena", "Speedup arena"),
    "Runs": ("6_runs", "Runs"),
    "Learn": ("7_learn", "Learn: one round, step by step"),
}
SERVER_START_S = 180  # `./dev app` may first have to check the venv; the health endpoint answers ~2 s after start
RUN_S = 240_000  # ms: a decode on a cold server loads the target and the drafter first (~15 s here, more under load)
STEP_MS = 60_000
CHART = '[data-testid="stPlotlyChart"] .main-svg'
MAX_SHOT_H = 4000  # px: the tallest screenshot (Learn is the longest page)


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip() -> str:
    """The chromium executable; skips (or fails under DTREE_REQUIRE_BROWSER=1) when it or playwright is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright==1.65.2, in requirements.txt)")
    exe = _chromium()
    if exe is None:
        missing.append("chromium (/usr/bin/chromium or `chromium` on PATH: apt-get install chromium)")
    if missing:
        msg = "browser test needs " + " and ".join(missing)
        if os.environ.get("DTREE_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + " (DTREE_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(msg)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`./dev app` on a free port with a temporary trace store; yields its URL and stops its process group after."""
    _browser_or_skip()
    tmp = tmp_path_factory.mktemp("browser_app")
    port = _free_port()
    env = dict(os.environ, DTREE_PORT=str(port), DTREE_STORE=str(tmp / "runs.sqlite"), OMP_WAIT_POLICY="PASSIVE")
    log_path = tmp / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["./dev", "app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`./dev app` exited with code {proc.returncode}:\n{log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer {url}/_stcore/health within {SERVER_START_S} s:\n{log_tail()}",
                            pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture()
def shot_dir(tmp_path) -> Path:
    d = Path(os.environ["DTREE_SCREENSHOT_DIR"]) if os.environ.get("DTREE_SCREENSHOT_DIR") else tmp_path / "shots"
    d.mkdir(parents=True, exist_ok=True)
    return d


class Driver:
    """The page plus the checks every step runs: the script finished, no exception box, no error, no JS error."""

    def __init__(self, page, shot_dir: Path):
        self.page = page
        self.shot_dir = shot_dir
        self.js_errors: list[str] = []
        self.name = "(start)"
        page.on("pageerror", lambda e: self.js_errors.append(f"{self.name}: {e}"))

    def settle(self, timeout_ms: int = STEP_MS) -> None:
        """Wait until the server has finished the current script run (widgets debounce first, hence the short pause;
        Streamlit's own browser tests do the same)."""
        self.page.wait_for_timeout(300)
        self.page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]',
                                    state="attached", timeout=timeout_ms)
        self.page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                                    state="attached", timeout=timeout_ms)

    def check(self) -> None:
        """Fail, naming the page, on a Streamlit exception box, an st.error message or a page JS error."""
        page = self.page
        exc = page.locator('[data-testid="stException"]')
        if exc.count():
            pytest.fail(f"{self.name}: Streamlit exception box:\n{exc.first.inner_text()[:3000]}", pytrace=False)
        err = page.locator('[data-testid="stAlertContentError"]')
        if err.count():
            pytest.fail(f"{self.name}: error message shown: {err.all_inner_texts()}", pytrace=False)
        if self.js_errors:
            pytest.fail(f"page JavaScript errors: {self.js_errors}", pytrace=False)

    def wait(self, selector_or_locator, timeout_ms: int = STEP_MS):
        """Wait for an element to be visible while checking the page (a failure shows up as an exception box instead
        of the element: report that rather than a timeout)."""
        loc = self.page.locator(selector_or_locator) if isinstance(selector_or_locator, str) else selector_or_locator
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.check()
            try:
                loc.first.wait_for(state="visible", timeout=1000)
                return loc
            except Exception:  # playwright TimeoutError: poll again
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name}: {selector_or_locator} did not appear within "
                                         f"{timeout_ms / 1000:.0f} s") from None

    def wait_count(self, selector: str, n: int, timeout_ms: int = STEP_MS) -> None:
        """Wait until at least ``n`` elements match ``selector`` (plotly draws its charts asynchronously)."""
        try:
            self.page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[selector, n],
                                        timeout=timeout_ms)
        except Exception:
            self.check()
            raise AssertionError(f"{self.name}: expected {n} x {selector}, found "
                                 f"{self.page.locator(selector).count()}") from None
        self.check()

    def open_from_sidebar(self, title: str) -> None:
        self.name = title
        self.page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
        self.arrived(title)

    def arrived(self, title: str) -> None:
        """Wait for ``title``'s page (its h1) and its first script run to end."""
        self.name = title
        self.wait(self.page.get_by_role("heading", name=PAGES[title][1], level=1, exact=True))
        self.settle()
        self.check()

    def screenshot(self) -> Path:
        """The whole page as a PNG. Streamlit scrolls inside its main container, not the document, so the viewport is
        stretched to the content's height (capped) for the shot, then restored."""
        self.settle()
        self.check()
        page = self.page
        size = page.viewport_size
        height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 0")
        page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), MAX_SHOT_H))})
        try:
            # every chart drawn (plotly renders asynchronously, also after a resize)
            page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                                   ".every(c => c.querySelector('.main-svg'))", timeout=STEP_MS)
            self.settle()
            self.check()
            path = self.shot_dir / f"{PAGES[self.name][0]}.png"
            page.screenshot(path=str(path), full_page=True)
        finally:
            page.set_viewport_size(size)
        return path

    def select(self, label: str, option: str) -> None:
        """Pick ``option`` in the selectbox labelled ``label``."""
        self.page.get_by_role("combobox", name=label, exact=True).click()
        self.page.get_by_role("option", name=option, exact=True).click()
        assert self.page.get_by_role("combobox", name=label, exact=True).input_value() == option

    def fill(self, label: str, value: str) -> None:
        """Type into the text input / number input labelled ``label`` and commit it (Tab)."""
        box = self.page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")

    def metrics(self) -> dict[str, str]:
        m = self.page.locator('[data-testid="stMetric"]')
        return {m.nth(i).locator('[data-testid="stMetricLabel"]').inner_text().strip():
                m.nth(i).locator('[data-testid="stMetricValue"]').inner_text().strip() for i in range(m.count())}


def test_browser_all_pages(app_url, shot_dir):
    exe = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(STEP_MS)
            d = Driver(page, shot_dir)
            page.goto(app_url)
            d.arrived("Live decode")
            nav = page.locator('[data-testid="stSidebarNav"] a')
            nav_titles = [re.sub(r"^\W+", "", t).strip() for t in nav.all_inner_texts()]
            assert nav_titles == list(PAGES), f"sidebar navigation: {nav_titles}"

            # ---- Live decode: a short ddtree run (B = 32, 16 tokens); wait for the output and the per-round strip
            d.page.get_by_label("Prompt", exact=True).fill("What is 6 times 7? Answer briefly.")
            d.select("Method", "ddtree")
            d.fill("Budget B (nodes)", "32")
            d.fill("Max new tokens", "16")
            page.get_by_role("button", name="Run", exact=True).click()
            d.wait(page.get_by_role("heading", name="Per-round stats"), RUN_S)
            d.settle(RUN_S)
            d.wait('[data-testid="stHtml"]')  # the output, coloured by round
            d.wait_count(CHART, 2)  # the per-round strip and the round's tree
            link = d.wait(page.get_by_role("link", name=re.compile(r"Open round \d+ in the Tree explorer")))
            assert int(d.metrics()["new tokens"]) >= 1
            shots.append(d.screenshot())

            # ---- Tree explorer through the page's own link (?run=ID&round=R)
            link.first.click()
            d.arrived("Tree explorer")
            assert re.search(r"[?&]run=\d+", page.url) and re.search(r"[?&]round=\d+", page.url), page.url
            d.wait_count(CHART, 2)  # the tree and the marginals heatmap
            assert page.locator('[data-testid="stPlotlyChart"] .main-svg g.trace').count() >= 1
            shots.append(d.screenshot())

            # ---- Cost model: profile a tiny grid on this server (the Budget lab then offers it)
            d.open_from_sidebar("Cost model")
            page.locator('[data-testid="stRadio"]').get_by_text("Profile now", exact=True).click()
            d.settle()
            d.fill("Repeats per point", "1")
            page.get_by_role("button", name="Profile", exact=True).click()
            d.wait(page.get_by_role("heading", name="Cost weights"), RUN_S)
            d.settle(RUN_S)
            d.wait(CHART)
            shots.append(d.screenshot())

            # ---- Budget lab: move the Cd scale slider with the keyboard; the note and the predictions follow
            d.open_from_sidebar("Budget lab")
            d.wait_count(CHART, 3)  # two sweeps and the budget histogram
            before = d.metrics()
            cd_scale = page.locator('[data-testid="stSlider"]').filter(has_text="Cd scale")
            slider = cd_scale.get_by_role("slider")
            slider.focus()
            for _ in range(5):
                slider.press("ArrowRight")
            d.wait(page.get_by_text("The cost weights model other hardware or load", exact=False))
            d.settle()
            moved = cd_scale.locator('[data-testid="stSliderThumbValue"]').inner_text().strip()
            assert float(moved) == pytest.approx(1.25), f"Budget lab: Cd scale slider shows {moved}, expected 1.25"
            after = d.metrics()
            assert after != before, f"Budget lab: metrics unchanged after moving the Cd scale: {after}"
            d.wait_count(CHART, 3)
            shots.append(d.screenshot())

            # ---- Speedup arena: a tiny bench (1 typed prompt, ar/chain/ddtree:16, a few tokens)
            d.open_from_sidebar("Speedup arena")
            d.select("Prompt set", "typed prompts (one per line)")
            d.fill("Typed prompts (for the typed source), one per line", "Name a primary colour.")
            d.fill("Number of prompts", "1")
            d.fill("Max new tokens", "6")
            page.get_by_role("button", name="Run the bench", exact=True).click()
            d.wait(page.get_by_role("heading", name="This bench"), RUN_S)
            d.settle(RUN_S)
            d.wait(CHART)
            shots.append(d.screenshot())

            # ---- Runs: the table and the comparison of two runs
            d.open_from_sidebar("Runs")
            d.wait(page.get_by_role("heading", name="Compare two runs"))
            d.wait(CHART)
            shots.append(d.screenshot())

            # ---- Learn: decode one round with ddtree and walk it
            d.open_from_sidebar("Learn")
            d.select("Tree method", "ddtree")
            d.fill("Budget B / max budget (nodes)", "8")
            d.fill("Tokens to decode", "6")
            page.get_by_role("button", name="Decode one round", exact=True).click()
            d.wait(page.get_by_role("heading", name=re.compile("How the target verifies")), RUN_S)
            d.settle(RUN_S)
            d.wait(CHART)
            shots.append(d.screenshot())
            d.check()
        finally:
            browser.close()
    assert sorted(p.stem for p in shots) == sorted(v[0] for v in PAGES.values())
    assert all(p.stat().st_size > 10_000 for p in shots)
    print(f"browser flow: {time.monotonic() - t0:.1f} s; screenshots in {shot_dir}")
