"""The documentation site: built strictly as README says (``mkdocs build --strict``: no
broken link, every notebook executed, every docstring parsed), then served on localhost
and read in Debian's Chromium, headless, as a student would: a notebook page shows its
figures, the API page shows Conv2D's docstring, the benchmark page its plots, and the
search finds "Winograd".

The build executes the seven notebooks once more (nbmake executes them as tests too):
about a minute on a 2-core machine. Set ``TINYCNN_DOCS_SCREENSHOTS=<folder>`` to keep
a screenshot of the pages it checks (notebook 07, the API, the benchmarks, the search).
"""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import chromium_page

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000   # a busy CI machine: Chromium's start, the search index loaded in its worker


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``mkdocs build --strict`` into a temporary folder -> (the folder, seconds the build took)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e \".[docs]\")")
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        log = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "INFO" not in line)
        pytest.fail(f"mkdocs build --strict failed ({proc.returncode}):\n{log[-6000:]}")
    return out, seconds


def test_site_builds_strictly_with_every_page(site):
    out, seconds = site
    from conftest import FIGURES
    FIGURES.append(f"docs site: mkdocs build --strict in {seconds:.0f} s (seven notebooks executed)")
    for page in ["index.html", "getting-started/index.html", "library/fast-convolution/index.html",
                 "fer/model-card/index.html", "benchmarks/index.html", "api/layers/index.html",
                 *(f"notebooks/{name}/index.html" for name in NOTEBOOKS)]:
        assert (out / page).is_file(), page
    for plot in ["train_img_s", "infer_img_s", "latency_ms", "peak_train_mb"]:   # drawn at build time
        assert (out / "benchmarks" / f"ratios-{plot}.png").stat().st_size > 10_000, plot
    assert "73.45%" in (out / "fer" / "model-card" / "index.html").read_text()   # the card itself, included


@pytest.fixture(scope="module")
def site_url(site):
    handler = functools.partial(_QuietHandler, directory=str(site[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(site_url, tmp_path_factory):
    """Headless Chromium -> (a page, the JavaScript errors it met)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does)")
    with chromium_page(CHROMIUM, tmp_path_factory.mktemp("chromium") / "profile", {"width": 1280, "height": 900},
                       timeout_ms=WAIT_MS) as browser:
        yield browser


def screenshot(page, name: str):
    folder = os.environ.get("TINYCNN_DOCS_SCREENSHOTS")
    if folder:
        page.wait_for_timeout(500)   # the header's title fades to the page's as it scrolls
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_page_shows_its_figures(browser, site_url, notebook):
    page = browser.page
    page.goto(f"{site_url}notebooks/{notebook}/", wait_until="load")
    figures = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img')]
        .map(img => ({loaded: img.complete, width: img.naturalWidth, height: img.naturalHeight}))""")
    assert figures, f"{notebook}: no figure on the page"
    for figure in figures:
        assert figure["loaded"] and figure["width"] > 0 and figure["height"] > 0, (notebook, figures)
    assert page.locator(".jp-OutputArea-output .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")\
        .filter(has_text="Traceback").count() == 0
    if notebook.startswith("07"):   # its overlapping Winograd tiles drawn on a face
        page.locator(".jp-OutputArea-output img").nth(min(2, len(figures) - 1))\
            .evaluate("i => { i.scrollIntoView(); window.scrollBy(0, -150); }")
        screenshot(page, "notebook-07")
    assert browser.errors == [], browser.errors


def test_api_page_shows_conv2d_docstring(browser, site_url):
    page = browser.page
    page.goto(f"{site_url}api/layers/", wait_until="load")
    heading = page.locator('[id="tinycnn.layers.convolution.Conv2D"]')
    heading.evaluate("h => { h.scrollIntoView(); window.scrollBy(0, -80); }")   # below the fixed header
    assert heading.is_visible()
    docstring = heading.locator("xpath=following-sibling::div[contains(@class, 'doc-contents')][1]")
    text = docstring.inner_text()
    assert "2-D convolution, NHWC, as keras.layers.Conv2D" in text, text[:500]
    assert "kernel_size" in text and "(KH, KW, C, O)" in text, text[:500]   # its arguments and shapes
    screenshot(page, "api-conv2d")
    assert browser.errors == [], browser.errors


def test_benchmark_page_shows_the_ratio_plots(browser, site_url):
    page = browser.page
    page.goto(f"{site_url}benchmarks/", wait_until="load")
    plots = page.evaluate("""() => [...document.querySelectorAll('article img[src^="ratios-"]')]
        .map(img => ({src: img.getAttribute('src'), width: img.naturalWidth, height: img.naturalHeight}))""")
    assert [p["src"] for p in plots] == [f"ratios-{k}.png" for k in ("train_img_s", "infer_img_s", "latency_ms",
                                                                     "peak_train_mb")], plots
    assert all(p["width"] > 300 and p["height"] > 100 for p in plots), plots
    page.locator("article img").first.evaluate("i => { i.scrollIntoView(); window.scrollBy(0, -120); }")
    screenshot(page, "benchmarks")
    assert browser.errors == [], browser.errors


def test_search_finds_winograd(browser, site_url):
    page = browser.page
    page.goto(site_url, wait_until="load")
    page.keyboard.press("/")   # Material's shortcut: opens the search box and focuses it
    page.locator("input.md-search__input").press_sequentially("Winograd")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible")
    assert results.count() >= 3
    assert "Winograd" in results.first.inner_text()
    titles = page.locator(".md-search-result__item h1").all_inner_texts()
    assert any("Fast convolution" in t for t in titles), titles
    screenshot(page, "search-winograd")
    assert browser.errors == [], browser.errors
