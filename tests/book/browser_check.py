"""Open every page of a built HTML book in headless Chromium and list what a reader would see go wrong.

Used by tests/book/test_browser.py, on the built book and on small broken fixture pages (which prove
that every check can fail). Each problem is a `Problem(check, page, message)`; the checks:

- ``console``     a JavaScript console error or an uncaught exception
- ``offhost``     a request to a host other than localhost (it is blocked, then reported)
- ``resource``    a local script, style, font or image that answered with an HTTP error
- ``image``       an ``<img>`` that did not load (``naturalWidth`` 0)
- ``tex``         TeX left untypeset: a math element without MathJax output, raw ``$$``, ``\\(``,
                  ``\\[``, ``\\begin{``, ``$x$`` text outside code, a MathJax error node, or an
                  undefined macro (which MathJax draws as its name in red)
- ``output``      an error or a traceback in a cell's output
- ``link``        an internal link whose target file or ``#anchor`` is missing
- ``figure``      a notebook page with no image in its outputs although its notebook has plotting cells
- ``sideways``    (phone viewport) the document scrolls sideways; code blocks, tables and equations
                  that scroll inside their own box are fine

Chromium is Debian's ``/usr/bin/chromium`` (``CHROMIUM`` overrides), driven by Playwright's Python
package (never ``playwright install``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No background traffic of Chromium's own (updates, sync, safe browsing): the only requests are the page's.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--password-store=basic",
    "--use-mock-keychain",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

# Folders of a Sphinx build that hold assets, not pages.
NOT_PAGES = {"_static", "_sources", "_images", "_downloads", "jupyter_execute", ".doctrees"}

# A code line that draws a figure.
PLOTTING = re.compile(
    r"\bplt\.|\bplot_\w+\s*\(|\.plot\s*\(|\.imshow\s*\(|\.scatter\s*\(|\.hist\s*\(|\.bar\s*\(|"
    r"\bsubplots?\s*\(|\bfigure\s*\(|\bfastadapt\.plotting\b"
)
# Raw TeX in text a reader sees.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{")
DOLLAR_MATH = re.compile(r"(?<![\w$\\])\$(?=[^\s$])([^$\n]{1,200}?)(?<=[^\s$\\])\$(?![\w$])")
TEX_ISH = re.compile(r"[\\^_{}=]|^[A-Za-z]$")


@dataclass(frozen=True)
class Problem:
    check: str
    page: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.page}: {self.message}"


@dataclass
class PageVisit:
    page: str  # path of the page inside the site, e.g. "book/01_task_sampling.html"
    viewport: str
    final_page: str = ""
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)  # hrefs as the browser resolved them
    output_images: int = 0


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class Site:
    """A folder served on 127.0.0.1 (a `http.server` thread) for as long as the `with` block lasts."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        handler = functools.partial(QuietHandler, directory=str(self.root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, page: str) -> str:
        return self.base + page

    def page_of(self, url: str) -> str | None:
        """The site path of a localhost URL, or None for another host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
            return None
        path = unquote(parts.path).lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        return path


def pages_of(root: Path) -> list[str]:
    """Every HTML page of a built site (not the assets in _static/, _sources/, ...)."""
    root = Path(root)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.html")
        if not NOT_PAGES.intersection(p.relative_to(root).parts)
    )


def plotting_cells(notebook: Path) -> int:
    """How many code cells of a notebook draw a figure (comments and magics ignored)."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    count = 0
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        code = "\n".join(
            line.split("#", 1)[0] for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
        count += bool(PLOTTING.search(code))
    return count


def raw_tex(text: str) -> str | None:
    """The first piece of untypeset TeX in a text a reader sees, or None."""
    match = RAW_TEX.search(text)
    if match:
        return text[max(0, match.start() - 30): match.end() + 30]
    for match in DOLLAR_MATH.finditer(text):
        inner = match.group(1)
        if TEX_ISH.search(inner) or len(inner.strip()) <= 2:
            return match.group(0)
    return None


# Runs in the page once it has loaded: waits for MathJax's first typeset and for every image, then
# reads what the checks need. Returns plain JSON.
INSPECT = r"""
async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const withTimeout = (p, ms) => Promise.race([p, sleep(ms)]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await withTimeout(MathJax.startup.promise, 20000);
  }
  if (document.fonts && document.fonts.ready) await withTimeout(document.fonts.ready, 5000);
  const images = Array.from(document.images);
  for (const img of images) { if (img.loading === 'lazy') img.loading = 'eager'; }
  await withTimeout(Promise.all(images.map((img) => img.complete ? null :
      new Promise((r) => { img.addEventListener('load', r); img.addEventListener('error', r); }))), 15000);
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    if (el.classList.length) s += '.' + Array.from(el.classList).slice(0, 3).join('.');
    return s;
  };
  const brokenImages = images.filter((img) => !(img.complete && img.naturalWidth > 0))
      .map((img) => img.getAttribute('src'));
  const mathErrors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]'))
      .map((e) => (e.getAttribute('data-mjx-error') || e.textContent || '').trim().slice(0, 120));
  // An undefined macro is drawn as its own name in red (MathJax's noundefined package).
  for (const e of document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')) {
    mathErrors.push('undefined macro ' + e.textContent.trim().slice(0, 60));
  }
  const untypeset = Array.from(document.querySelectorAll('span.math, div.math, .output.text_latex'))
      .filter((e) => !e.querySelector('mjx-container'))
      .map((e) => e.textContent.trim().slice(0, 120));
  const CODE = 'pre, code, script, style, textarea, kbd, samp, noscript, template, mjx-container, ' +
               '.highlight, .MathJax, title';
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(CODE)) continue;
    const t = n.textContent;
    if (t.includes('$') || t.includes('\\')) texts.push(t.slice(0, 2000));
  }
  const outputErrors = [];
  for (const e of document.querySelectorAll('.output.traceback, .output.error, .cell_output .traceback')) {
    outputErrors.push(describe(e) + ': ' + e.textContent.trim().slice(0, 160));
  }
  for (const e of document.querySelectorAll('.cell_output, .output')) {
    const t = e.textContent;
    const i = t.indexOf('Traceback (most recent call last)');
    if (i >= 0) outputErrors.push(describe(e) + ': ' + t.slice(i, i + 160));
    else if (/\x1b\[[0-9;]*m/.test(t) && /(Error|Exception)/.test(t)) outputErrors.push(describe(e) + ': ' + t.slice(0, 160));
  }
  const ids = Array.from(document.querySelectorAll('[id]')).map((e) => e.id)
      .concat(Array.from(document.querySelectorAll('a[name]')).map((e) => e.getAttribute('name')));
  const links = Array.from(document.querySelectorAll('a[href]')).map((a) => a.href);
  const outputImages = document.querySelectorAll('.cell_output img, .output img').length;
  // Sideways scrolling: the document is wider than the window. Name the widest culprits, ignoring
  // anything inside a box that scrolls (or clips) on its own.
  // On a phone the browser widens innerWidth to fit a too-wide page; the layout viewport
  // (clientWidth) keeps the screen's width.
  const vw = Math.min(window.innerWidth, document.documentElement.clientWidth);
  const docWidth = document.documentElement.scrollWidth;
  const wide = [];
  if (docWidth > vw) {
    const clipped = (el) => {
      for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
        const o = getComputedStyle(a).overflowX;
        if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
      }
      return false;
    };
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.right <= vw + 1 || clipped(el)) continue;
      const parent = el.parentElement;
      if (parent && parent !== document.body && parent.getBoundingClientRect().right > vw + 1 && !clipped(parent)) continue;
      wide.push(describe(el) + ` (right edge at ${Math.round(r.right)} px)`);
      if (wide.length >= 5) break;
    }
  }
  return {brokenImages, mathErrors, untypeset, texts, outputErrors, ids, links, outputImages,
          docWidth, innerWidth: vw, wide, url: location.href};
}
"""


class Browser:
    """Headless Chromium with one context per viewport; every request off localhost is blocked and noted."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise RuntimeError(
                f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), "
                "as `make test` and .ci/run do"
            )
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def crawl(
    browser: Browser,
    site: Site,
    pages: list[str],
    viewport: str = "desktop",
    screenshots: dict[str, Path] | None = None,
) -> tuple[list[Problem], list[PageVisit]]:
    """Open each page at one viewport ("desktop", or "phone": 390 px wide, touch) and check it."""
    size = PHONE if viewport == "phone" else DESKTOP
    options = {"viewport": size, "java_script_enabled": True, "service_workers": "block"}
    if viewport == "phone":
        options.update(device_scale_factor=2, is_mobile=True, has_touch=True)
    context = browser.browser.new_context(**options)
    problems: list[Problem] = []
    visits: list[PageVisit] = []
    current = {"page": ""}

    def note(check: str, message: str) -> None:
        problems.append(Problem(check, f"{current['page']} ({viewport})", message))

    def route(r):
        if site.page_of(r.request.url) is None and not r.request.url.startswith(("data:", "blob:")):
            note("offhost", f"{r.request.resource_type} request to {r.request.url}")
            r.abort("blockedbyclient")
        else:
            r.continue_()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(30000)
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource: net::ERR_BLOCKED_BY_CLIENT")
            and note("console", m.text[:300]))
    page.on("pageerror", lambda e: note("console", f"uncaught {e}"[:300]))
    page.on("response", lambda r: r.status >= 400 and site.page_of(r.url) is not None
            and note("resource", f"HTTP {r.status} for {r.url.removeprefix(site.base)}"))
    page.on("requestfailed", lambda r: site.page_of(r.url) is not None
            and note("resource", f"{r.failure} for {r.url.removeprefix(site.base)}"))
    try:
        for name in pages:
            current["page"] = name
            visit = PageVisit(page=name, viewport=viewport)
            html = (site.root / name).read_text(encoding="utf-8", errors="replace")
            refresh = re.search(r"<meta[^>]+http-equiv=[\"']refresh[\"'][^>]*url=([^\"'>]+)", html, re.I)
            page.goto(site.url(name), wait_until="load")
            if refresh:  # index.html of a Jupyter Book is a redirect to the root page
                page.wait_for_url(lambda u, page=name: site.page_of(u) != page, timeout=10000)
                page.wait_for_load_state("load")
            data = page.evaluate(INSPECT)
            visit.final_page = site.page_of(data["url"]) or data["url"]
            for src in data["brokenImages"]:
                note("image", f"image did not load: {src}")
            for text in data["mathErrors"]:
                note("tex", f"MathJax error: {text}")
            for text in data["untypeset"]:
                note("tex", f"math element left untypeset: {text}")
            for text in data["texts"]:
                found = raw_tex(text)
                if found:
                    note("tex", f"raw TeX in the text: {' '.join(found.split())}")
            for text in data["outputErrors"]:
                note("output", f"error in a cell's output: {text}")
            if viewport == "phone" and data["docWidth"] > data["innerWidth"]:
                note("sideways", f"the page is {data['docWidth']} px wide in a {data['innerWidth']} px window; "
                                 f"too wide: {'; '.join(data['wide']) or '(no single element found)'}")
            visit.ids = set(data["ids"])
            visit.links = data["links"]
            visit.output_images = data["outputImages"]
            visits.append(visit)
            if screenshots and name in screenshots:
                # A chapter is shown at its first figure (its start looks like every other page).
                page.evaluate("() => { const f = document.querySelector('.cell_output img');"
                              " if (f && !location.pathname.endsWith('intro.html')) f.scrollIntoView({block: 'center'}); }")
                screenshots[name].parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshots[name]), full_page=False)
    finally:
        context.close()
    return problems, visits


def check_links(site: Site, visits: list[PageVisit]) -> list[Problem]:
    """Every link to a page of the site leads to a file that exists, and to an anchor on it."""
    ids = {v.final_page: v.ids for v in visits}
    ids.update({v.page: v.ids for v in visits})
    problems = []
    seen = set()
    for visit in visits:
        for href in visit.links:
            target = site.page_of(href)
            if target is None or (visit.page, href) in seen:
                continue
            seen.add((visit.page, href))
            fragment = unquote(urlsplit(href).fragment)
            path = site.root / target
            if not path.is_file():
                problems.append(Problem("link", visit.page, f"link to a missing file: {target}"))
            elif fragment and target.endswith(".html"):
                anchors = ids.get(target)
                if anchors is None:
                    html = path.read_text(encoding="utf-8", errors="replace")
                    anchors = set(re.findall(r"\b(?:id|name)=[\"']([^\"']+)", html))
                    ids[target] = anchors
                if fragment not in anchors:
                    problems.append(Problem("link", visit.page, f"link to a missing anchor: {target}#{fragment}"))
    return problems


def check_figures(site: Site, visits: list[PageVisit]) -> list[Problem]:
    """A page built from a notebook with plotting cells shows at least one image in its outputs."""
    problems = []
    for visit in visits:
        source = site.root / "_sources" / Path(visit.page).with_suffix(".ipynb")
        if not source.is_file():
            continue
        plots = plotting_cells(source)
        if plots and visit.output_images == 0:
            problems.append(Problem(
                "figure", f"{visit.page} ({visit.viewport})",
                f"no figure on the page, but {plots} code cell(s) of the notebook plot",
            ))
    return problems


def check_site(root: Path, pages: list[str] | None = None, screenshots: dict[str, Path] | None = None,
               viewports: tuple[str, ...] = ("desktop", "phone")) -> tuple[list[Problem], dict[str, list[PageVisit]]]:
    """All checks over the pages of a built site, at each viewport. `screenshots` maps
    "<viewport>:<page>" to a PNG path to write."""
    pages = pages if pages is not None else pages_of(root)
    problems: list[Problem] = []
    visits: dict[str, list[PageVisit]] = {}
    with Site(root) as site, Browser() as browser:
        for viewport in viewports:
            shots = {k.split(":", 1)[1]: v for k, v in (screenshots or {}).items() if k.startswith(viewport + ":")}
            found, visits[viewport] = crawl(browser, site, pages, viewport, shots)
            problems += found
        first = visits[viewports[0]]
        problems += check_links(site, first)
        problems += check_figures(site, first)
    return problems, visits


def link_mathjax(folder: Path) -> Path:
    """Put the installed MathJax (django-static-mathjax) at folder/mathjax, for fixture pages."""
    from importlib.util import find_spec

    spec = find_spec("mathjax")
    source = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    target = Path(folder) / "mathjax"
    try:
        target.symlink_to(source, target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)
    return target
