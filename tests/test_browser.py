"""Every dashboard page in headless Chromium: no JavaScript errors, no empty plots, screenshots saved.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver)
and the ``selenium`` package; skips with the reason when one is missing (it installs nothing itself).
Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_report import STUDY_NAME, shared_study_db

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # ~30 s: 5 pages in Chromium

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Per plot div: how many traces, and how many of them have points (x/y, values, or parcoords dimensions).
PLOT_CHECK_JS = """
const out = [];
for (const gd of document.querySelectorAll('.js-plotly-plot')) {
  const data = gd.data || [];
  let withPoints = 0;
  for (const t of data) {
    const n = Math.max(
      (t.x || []).length, (t.y || []).length, (t.values || []).length,
      ...((t.dimensions || []).map(d => (d.values || []).length)), 0);
    if (n > 0) withPoints += 1;
  }
  out.push({title: (gd.layout && gd.layout.title && gd.layout.title.text) || '', traces: data.length,
            withPoints: withPoints, svg: gd.querySelectorAll('svg').length});
}
return {plots: out, declared: Number(document.body.dataset.tslPlots || 0), plotly: typeof Plotly};
"""


def _driver():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.skip(f"{path} missing: apt-get install -y {pkg}")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from tinysiglip.results.dashboards import main

    url, _ = shared_study_db(tmp_path_factory)
    out = tmp_path_factory.mktemp("browser_dash")
    assert main(["--storage", url, "--out", str(out)]) == 0
    return out, sorted((out / STUDY_NAME).glob("*.html"))


def test_pages_render_without_errors(browser, pages):
    out, files = pages
    assert files
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for f in [out / "index.html", *files]:
        browser.get(f.resolve().as_uri())
        browser.implicitly_wait(2)
        result = browser.execute_script(PLOT_CHECK_JS)
        browser.set_window_size(1400, max(1000, 560 * max(1, len(result["plots"])) + 300))
        browser.save_screenshot(str(ARTIFACTS / f"{f.parent.name}_{f.stem}.png"))
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        if errors:
            problems.append(f"{f.name}: JavaScript errors {errors}")
        if f.name == "index.html":
            continue
        if result["plotly"] != "object" and result["plotly"] != "function":
            problems.append(f"{f.name}: Plotly not loaded")
        if len(result["plots"]) != result["declared"] or not result["plots"]:
            problems.append(f"{f.name}: {len(result['plots'])} plots rendered, {result['declared']} written")
        for p in result["plots"]:
            if p["traces"] == 0 or p["withPoints"] == 0 or p["svg"] == 0:
                problems.append(f"{f.name}: empty plot {p}")
    assert not problems, "\n".join(problems)
    assert len(list(ARTIFACTS.glob("*.png"))) == len(files) + 1
