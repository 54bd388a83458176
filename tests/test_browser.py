"""Every dashboard page in headless Chromium: no JavaScript errors, no empty plots, plotly.js loaded from
the one copy in the study's folder, the teacher's reference lines drawn, whole-number epoch ticks;
screenshots saved.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver)
and the ``selenium`` package; skips with the reason when one is missing (it installs nothing itself).
Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
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
  const teacherLines = ((gd.layout && gd.layout.shapes) || []).filter(
    s => (s.name || '').startsWith('teacher ')).length;
  out.push({title: (gd.layout && gd.layout.title && gd.layout.title.text) || '', traces: data.length,
            withPoints: withPoints, svg: gd.querySelectorAll('svg').length, teacherLines: teacherLines,
            shapesDrawn: gd.querySelectorAll('.shapelayer path').length,
            xticks: Array.from(gd.querySelectorAll('.xtick text')).map(t => t.textContent)});
}
const scripts = Array.from(document.querySelectorAll('script[src]')).map(s => s.getAttribute('src'));
return {plots: out, declared: Number(document.body.dataset.tslPlots || 0), plotly: typeof Plotly,
        scripts: scripts};
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
    seen: dict[str, dict] = {}
    for f in [out / "index.html", *files]:
        browser.get(f.resolve().as_uri())
        browser.implicitly_wait(2)
        result = browser.execute_script(PLOT_CHECK_JS)
        browser.set_window_size(1400, max(1000, 600 * max(1, len(result["plots"])) + 300))
        browser.save_screenshot(str(ARTIFACTS / f"{f.parent.name}_{f.stem}.png"))
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        if errors:
            problems.append(f"{f.name}: JavaScript errors {errors}")
        if f.name == "index.html":
            continue
        seen[f.stem] = result
        if result["plotly"] != "object" and result["plotly"] != "function":
            problems.append(f"{f.name}: Plotly not loaded")
        if result["scripts"] != ["plotly.min.js"]:
            problems.append(
                f"{f.name}: scripts {result['scripts']}, expected the folder's plotly.min.js only"
            )
        if len(result["plots"]) != result["declared"] or not result["plots"]:
            problems.append(f"{f.name}: {len(result['plots'])} plots rendered, {result['declared']} written")
        for p in result["plots"]:
            if p["traces"] == 0 or p["withPoints"] == 0 or p["svg"] == 0:
                problems.append(f"{f.name}: empty plot {p}")
    assert not problems, "\n".join(problems)
    assert len(list(ARTIFACTS.glob("*.png"))) == len(files) + 1
    # one plotly.js per dashboard folder, none inlined
    assert [p.name for p in (out / STUDY_NAME).glob("*.js")] == ["plotly.min.js"]
    # the learning-curve overlay: whole-number epoch ticks and the teacher's reference line, drawn
    (curves,) = [p for p in seen["curves"]["plots"] if p["title"].startswith("Learning curves")]
    assert curves["xticks"] and all(re.fullmatch(r"\d+", t) for t in curves["xticks"]), curves["xticks"]
    assert curves["teacherLines"] >= 1 and curves["shapesDrawn"] >= curves["teacherLines"]
    (bars,) = [p for p in seen["results"]["plots"] if "R@1 per cell" in p["title"]]
    assert bars["teacherLines"] >= 2 and bars["shapesDrawn"] >= bars["teacherLines"]  # I2T and T2I
