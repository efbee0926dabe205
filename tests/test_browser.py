"""The built ci-scale book, opened page by page in a real browser (headless Debian chromium).

The start page, every page of the table of contents, the search page and the general index are
served from 127.0.0.1 and each loaded once, in one browser. The tests then check what a reader
would see: no console or page errors, no request leaving the machine, every equation typeset by
MathJax, every image loaded and given alt text, inside a numbered, captioned figure that the prose
links to, no code cell, output, table or equation wider than the page column, and every exercise
solution collapsed until its toggle is clicked. A full-page screenshot of each page (its solutions
opened) is saved as _build/screenshots/<page>.png.

    make test     # nbval runs the chapters once; the ci_book fixture (tests/conftest.py) builds the book
    JEPABOOK_BOOK_HTML=/tmp/html OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_browser.py

JEPABOOK_BOOK_HTML points the tests at an html folder that is already built (no chapter runs and
nothing is built); JEPABOOK_CHROMIUM names the chromium executable (default: `chromium` on PATH,
which `make test` installs from apt where it is missing). Playwright's browser download is never used.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from jepabook import book

pytestmark = [pytest.mark.slow, pytest.mark.after_chapters]

SCREENSHOTS = book.ROOT / "_build" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VIEWPORT = {"width": 1280, "height": 800}  # a laptop screen: the page column is about 750 px wide
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"]
SEARCH_TERM = "SIGReg"

# Runs in a page: what a reader would find wrong with it (see the module docstring).
PAGE_PROBLEMS_JS = r"""
() => {
  const article = document.querySelector("article.bd-article") || document.body;
  const column = article.clientWidth;
  const text = (el) => (el.innerText || el.textContent || "").replace(/\s+/g, " ").trim();
  const file = (img) => (img.getAttribute("src") || "").split("/").pop().slice(0, 16);
  const kind = (el) => {
    const tag = (el.matches("div") && el.querySelector("table, pre, img") || el).tagName.toLowerCase();
    if (el.closest(".cell_input")) return "code " + tag;
    if (el.closest(".cell_output")) return "output " + tag;
    if (el.closest("div.math, mjx-container")) return "equation";
    return tag;
  };
  const out = {overflow: [], rawMath: [], images: [], figures: [], figureIds: [], links: []};

  // Blocks wider than the page column, or whose content is wider than the block (sideways scroll).
  const blocks = [...article.querySelectorAll(
    "pre, div.cell_output > div, table, div.math, mjx-container[display='true'], figure, img, div.highlight"
  )];
  const wide = blocks.filter((el) =>
    el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().width > column + 1);
  for (const el of wide.filter((el) => !wide.some((other) => other !== el && el.contains(other)))) {
    const width = Math.max(el.scrollWidth, el.getBoundingClientRect().width);
    const room = Math.min(el.clientWidth || column, column);
    const what = el.tagName === "IMG" ? file(el) : text(el).slice(0, 40);
    out.overflow.push(`${kind(el)} ${Math.round(width)} px in ${Math.round(room)} px: "${what}"`);
  }
  const page = document.documentElement.scrollWidth;
  if (page > window.innerWidth + 1) {
    out.overflow.push(`the page scrolls sideways: ${page} px in ${window.innerWidth} px`);
  }

  // TeX that MathJax left as text (code is skipped: `$$` or `\(` may be literal there).
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => node.parentElement.closest("pre, code, script, style, textarea, mjx-container")
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.textContent.search(/\$\$|\\\(|\\\[|\\begin\{/);
    if (at >= 0) out.rawMath.push(node.textContent.slice(Math.max(0, at - 20), at + 40).replace(/\s+/g, " ").trim());
  }

  // Images: loaded, with alt text (Sphinx writes the image's path as alt when it has none).
  for (const img of document.images) {
    const src = img.getAttribute("src") || "";
    if (!(img.complete && img.naturalWidth > 0)) out.images.push(`img not loaded: ${src}`);
    if (!article.contains(img)) continue;
    const alt = (img.getAttribute("alt") || "").trim();
    if (!alt || alt === src || /\.(png|jpe?g|svg|gif)$/i.test(alt)) {
      out.images.push(`img without alt text: ${file(img)}`);
    }
    if (!img.closest("figure")) out.figures.push(`img outside a numbered figure: ${file(img)}`);
  }
  for (const figure of article.querySelectorAll("figure")) {
    const caption = figure.querySelector("figcaption");
    const name = figure.id || file(figure.querySelector("img") || figure);
    if (!caption || !text(caption)) out.figures.push(`figure without caption: ${name}`);
    else if (!caption.querySelector(".caption-number")) out.figures.push(`figure not numbered: ${name}`);
    if (figure.id) out.figureIds.push(figure.id);
  }
  out.links = [...article.querySelectorAll("a[href]:not(.headerlink)")].map((a) => a.href);
  return out;
}
"""

# Resolves once MathJax has typeset the page; at once on a page that does not load MathJax.
MATHJAX_DONE_JS = """
async () => {
  if (![...document.scripts].some((s) => /mathjax/i.test(s.src))) return "no math";
  const started = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  for (let i = 0; i < 300 && !started(); i++) await new Promise((done) => setTimeout(done, 50));
  if (!started()) return "MathJax did not start within 15 s";
  await MathJax.startup.promise;
  return "typeset";
}
"""

# Resolves once every image has loaded or failed (lazy ones too).
IMAGES_DONE_JS = """
async () => {
  await Promise.all([...document.images].map((img) => {
    img.loading = "eager";
    return img.complete ? null : new Promise((done) => {
      img.addEventListener("load", done);
      img.addEventListener("error", done);
    });
  }));
}
"""


def chromium_executable() -> str:
    """The chromium to drive: $JEPABOOK_CHROMIUM, else `chromium` on PATH; fails the test if none."""
    path = os.environ.get("JEPABOOK_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        pytest.fail(
            "no chromium executable: `make test` installs Debian's chromium (apt-get install -y "
            "chromium); or set JEPABOOK_CHROMIUM to a chromium binary (Playwright's own browser "
            "download is not used)"
        )
    return path


def book_pages() -> list[str]:
    """Pages to open, as paths relative to the html folder without .html: the start page, every
    page of _toc.yml, the search page and the general index."""
    return list(dict.fromkeys(["index", *book.toc_entries(), "search", "genindex"]))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 (a free port) from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Browser:
    """One chromium page, with the requests to other hosts it blocked and the errors it logged."""

    page: object
    current: str = ""  # the book page being checked: events are filed under it
    outside: list[tuple[str, str]] = field(default_factory=list)  # (book page, blocked URL)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (book page, console/page error)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium: one browser, one context, one page; every request to a host other than
    127.0.0.1 or localhost is blocked and recorded, console errors and page errors are recorded."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        context = chromium.new_context(viewport=VIEWPORT)
        state = Browser(page=context.new_page())

        def route(route) -> None:
            url = urlparse(route.request.url)
            if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in LOCAL_HOSTS:
                state.outside.append((state.current, route.request.url))
                route.abort()
            else:
                route.continue_()

        def console(message) -> None:
            blocked = {url for _, url in state.outside}  # already reported as outside requests
            if message.type == "error" and message.location.get("url") not in blocked:
                state.errors.append((state.current, message.text))

        context.route("**/*", route)
        state.page.on("console", console)
        state.page.on("pageerror", lambda error: state.errors.append((state.current, str(error))))
        try:
            yield state
        finally:
            context.close()
            chromium.close()


@pytest.fixture(scope="module")
def site(ci_book: Path) -> Iterator[str]:
    """The base URL of the ci-scale book served from 127.0.0.1."""
    with serve(ci_book) as base:
        yield base


@dataclass
class Sweep:
    """What the visit of every page found, by kind of problem: lines of "page: problem"."""

    problems: dict[str, list[str]]
    solutions: int  # solution dropdowns opened in the whole book
    seconds: dict[str, float]  # per page


KINDS = ("missing", "errors", "outside", "math", "images", "figures", "overflow", "solutions")


def _open_solutions(page) -> tuple[int, list[str]]:
    """Check that each exercise solution starts collapsed and opens on its toggle; opens them all."""
    solutions = page.locator("article div.solution")
    problems = []
    for i in range(solutions.count()):
        solution = solutions.nth(i)
        title = " ".join(solution.locator(".admonition-title").first.inner_text().split())
        body = solution.locator(":scope > .admonition-title ~ *").first
        toggle = solution.locator("button.toggle-button")
        if "dropdown" not in (solution.get_attribute("class") or "").split():
            problems.append(f'"{title}" is not collapsed (no :class: dropdown)')
            continue
        if body.is_visible():
            problems.append(f'"{title}" is open before its toggle is clicked')
        if toggle.count() != 1:
            problems.append(f'"{title}" has {toggle.count()} toggle buttons')
            continue
        toggle.click()
        try:
            body.wait_for(state="visible", timeout=3000)
        except Exception:  # playwright's TimeoutError
            problems.append(f'"{title}" stays hidden after its toggle is clicked')
    return solutions.count(), problems


def _visit(
    browser: Browser, base: str, html: Path, name: str, found: dict[str, list[str]], shots: Path
) -> dict:
    """Open page `name` (html/name.html, served at base) and file its problems under `found`; saves
    its screenshot in `shots`. Returns its solution count, figure ids and links."""
    page, none = browser.page, {"solutions": 0, "figureIds": [], "links": []}
    browser.current = name
    if not (html / f"{name}.html").exists():
        found["missing"].append(f"{name}: {name}.html is missing")
        return none
    response = page.goto(f"{base}{name}.html", wait_until="load")
    if response is None or not response.ok:
        found["errors"].append(f"{name}: HTTP {response.status if response else 'no response'}")
    if 'http-equiv="Refresh"' in (html / f"{name}.html").read_text(errors="replace"):
        page.wait_for_url(lambda url: not url.endswith(f"/{name}.html"), timeout=10_000)
        return none  # a page that forwards to another, checked as itself
    page.evaluate(IMAGES_DONE_JS)
    math = page.evaluate(MATHJAX_DONE_JS)
    if math not in ("no math", "typeset"):
        found["math"].append(f"{name}: {math}")
    solutions, problems = _open_solutions(page)
    found["solutions"] += [f"{name}: {problem}" for problem in problems]
    checks = page.evaluate(PAGE_PROBLEMS_JS)
    found["math"] += [f"{name}: raw TeX left in the text: {t!r}" for t in checks["rawMath"]]
    for kind in ("images", "figures", "overflow"):
        found[kind] += [f"{name}: {problem}" for problem in checks[kind]]
    page.screenshot(path=shots / f"{Path(name).name}.png", full_page=True)
    return {"solutions": solutions, **checks}


def _sweep(browser: Browser, base: str, html: Path, pages: list[str], shots: Path, seconds: dict):
    """Visit `pages` once each; the problems found, by kind, with the outside requests and errors."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    errors, outside = len(browser.errors), len(browser.outside)
    solutions, figures, links = 0, [], set()
    for name in pages:
        start = time.perf_counter()
        checks = _visit(browser, base, html, name, found, shots)
        seconds[name] = time.perf_counter() - start
        solutions += checks["solutions"]
        figures += [(name, figure) for figure in checks["figureIds"]]
        links.update(checks["links"])
    browser.current = ""
    for name, figure in figures:  # cited by a link in the prose of some page
        if f"{base}{name}.html#{figure}" not in links:
            found["figures"].append(f"{name}: figure {figure} is not referenced from the prose")
    found["errors"] += [f"{page}: {error}" for page, error in browser.errors[errors:]]
    found["outside"] += [f"{page}: {url}" for page, url in browser.outside[outside:]]
    return Sweep(problems=found, solutions=solutions, seconds=seconds)


@pytest.fixture(scope="module")
def sweep(browser: Browser, site: str, ci_book: Path, page_seconds: dict[str, float]) -> Sweep:
    """Every page of the book opened once, with what it shows wrong; screenshots saved."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # the folder shows this book only
        old.unlink()
    return _sweep(browser, site, ci_book, book_pages(), SCREENSHOTS, page_seconds)


def _report(sweep: Sweep, *kinds: str) -> str:
    lines = [line for kind in kinds for line in sweep.problems[kind]]
    return f"{len(lines)} problems:\n" + "\n".join(lines)


def test_every_page_loads_without_errors_or_outside_requests(sweep: Sweep):
    assert not any(sweep.problems[k] for k in ("missing", "errors", "outside")), _report(
        sweep, "missing", "errors", "outside"
    )


def test_every_equation_is_typeset(sweep: Sweep):
    assert not sweep.problems["math"], _report(sweep, "math")


def test_images_load_with_alt_text_in_numbered_captioned_cited_figures(sweep: Sweep):
    assert not (sweep.problems["images"] or sweep.problems["figures"]), _report(
        sweep, "images", "figures"
    )


def test_code_outputs_tables_and_equations_fit_the_page_column(sweep: Sweep):
    assert not sweep.problems["overflow"], _report(sweep, "overflow")


def test_exercise_solutions_start_collapsed_and_open_on_their_toggle(sweep: Sweep):
    assert sweep.solutions >= 1, "the book has no exercise solution to open"
    assert not sweep.problems["solutions"], _report(sweep, "solutions")


def test_every_page_has_a_screenshot(sweep: Sweep):
    shots = sorted(SCREENSHOTS.glob("*.png"))
    assert len(shots) >= len(book.toc_entries()), [shot.name for shot in shots]
    assert all(shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for shot in shots)


TEACHING_PAGE = "chapters/lemma1_sphere"  # the two screenshots a teacher looks at first


def test_screenshots_of_a_chapter_top_and_an_exercise(browser: Browser, site: str, sweep: Sweep):
    """Screen-sized views of what a student meets: a chapter's opening (its learning goals) and its
    first exercise with the solution opened, as _build/screenshots/<chapter>-top.png and -exercise.png."""
    page, name = browser.page, Path(TEACHING_PAGE).name
    browser.current = TEACHING_PAGE
    page.goto(f"{site}{TEACHING_PAGE}.html", wait_until="load")
    page.evaluate(MATHJAX_DONE_JS)
    assert "You will learn" in page.locator("article").first.inner_text()
    top = SCREENSHOTS / f"{name}-top.png"
    page.screenshot(path=top)
    exercise = page.locator("article div.exercise").first
    exercise.scroll_into_view_if_needed()
    page.locator("article div.solution button.toggle-button").first.click()
    page.wait_for_timeout(300)  # the toggle's transition
    shot = SCREENSHOTS / f"{name}-exercise.png"
    page.screenshot(path=shot)
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in (top, shot))


def test_search_finds_sigreg_and_not_a_made_up_word(browser: Browser, site: str):
    page = browser.page
    browser.current = "search"
    page.goto(f"{site}search.html?q={SEARCH_TERM}", wait_until="load")
    page.wait_for_selector("#search-results p.search-summary", timeout=20_000)
    results = page.locator("#search-results ul.search li")
    assert results.count() >= 1, page.locator("#search-results").inner_text()
    hrefs = [
        results.nth(i).locator("a").first.get_attribute("href") for i in range(results.count())
    ]
    assert any(href.startswith("chapters/") for href in hrefs), hrefs
    page.goto(f"{site}search.html?q=zqxjvw", wait_until="load")
    page.wait_for_selector("#search-results p.search-summary", timeout=20_000)
    assert page.locator("#search-results ul.search li").count() == 0


BROKEN_PAGE = """<html><head><script src="https://cdn.example.org/lib.js"></script></head><body>
<article class="bd-article" style="width: 600px">
<p>Left as TeX: $$x^2$$</p>
<p>Also as TeX: \\(y\\)</p>
<img src="missing.png" alt="a picture that is not there">
<figure><img src="pixel.png" alt="pixel.png"></figure>
<p>As <a href="#f-cited">Fig. 1</a> shows.</p>
<figure id="f-cited"><img src="pixel.png" alt="one black pixel">
<figcaption><span class="caption-number">Fig. 1 </span>Cited.</figcaption></figure>
<figure id="f-uncited"><img src="pixel.png" alt="one black pixel">
<figcaption><span class="caption-number">Fig. 2 </span>Not cited.</figcaption></figure>
<div class="cell_output"><div class="output"><pre>{long_line}</pre></div></div>
<div class="solution dropdown admonition"><p class="admonition-title">Solution to Exercise 1</p>
<section><p>Shown from the start.</p></section></div>
<script>console.error("an error")</script>
</article></body></html>"""
ONE_PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_the_checks_catch_every_kind_of_problem_on_a_broken_page(browser: Browser, tmp_path: Path):
    (tmp_path / "broken.html").write_text(BROKEN_PAGE.format(long_line="x" * 400))
    (tmp_path / "pixel.png").write_bytes(base64.b64decode(ONE_PIXEL_PNG))
    errors, outside = len(browser.errors), len(browser.outside)
    with serve(tmp_path) as base:
        found = _sweep(browser, base, tmp_path, ["broken", "absent"], tmp_path, {}).problems
    del browser.errors[errors:], browser.outside[outside:]  # this page is not the book's
    assert found["missing"] == ["absent: absent.html is missing"]
    assert found["errors"][0] == "broken: an error"
    assert [e.split(": ")[1] for e in found["errors"][1:]] == ["Failed to load resource"], found
    assert "404" in found["errors"][1]
    assert found["outside"] == ["broken: https://cdn.example.org/lib.js"]
    assert found["math"] == [
        "broken: raw TeX left in the text: 'Left as TeX: $$x^2$$'",
        "broken: raw TeX left in the text: 'Also as TeX: \\\\(y\\\\)'",
    ]
    assert found["images"] == [
        "broken: img not loaded: missing.png",
        "broken: img without alt text: pixel.png",
    ]
    assert found["figures"] == [
        "broken: img outside a numbered figure: missing.png",
        "broken: figure without caption: pixel.png",
        "broken: figure f-uncited is not referenced from the prose",
    ]
    assert found["overflow"][0].startswith("broken: output pre "), found["overflow"]
    assert found["overflow"][0].endswith(
        ' px in 600 px: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"'
    )
    assert found["solutions"] == [
        'broken: "Solution to Exercise 1" is open before its toggle is clicked',
        'broken: "Solution to Exercise 1" has 0 toggle buttons',
    ]
    assert (tmp_path / "broken.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
