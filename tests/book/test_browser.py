"""The built book, as a reader sees it: every page opened in headless Chromium, at a desktop and at a
phone-sized viewport (390 px). What is checked is listed in browser_check.py.

The book under test is the quick-setting HTML that `make test` builds into _quickbook/_build/html from the
notebooks nbmake executed (FASTADAPT_BOOK_HTML overrides, e.g. `FASTADAPT_BOOK_HTML=_build/html` for the
full book). When it is absent the test builds it first (`make quick-book`).

The first tests run the checker on small, deliberately broken fixture pages: each check must fail on
its own fault and pass on a clean page, or a green book would prove nothing.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="the browser test needs Playwright (in requirements.txt)")

import browser_check as bc  # noqa: E402  (tests/book/ is on sys.path: pytest's rootdir-relative import)

ROOT = Path(__file__).resolve().parents[2]
BOOK_HTML = Path(os.environ.get("FASTADAPT_BOOK_HTML", ROOT / "_quickbook" / "_build" / "html"))
if not BOOK_HTML.is_absolute():
    BOOK_HTML = ROOT / BOOK_HTML
SCREENSHOTS = ROOT / "_build" / "screenshots"
REPOSITORY = "fastadapt/fastadapt"
BRANCH = "main"

# The smallest PNG there is: one pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def page(body: str, head: str = "") -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>fixture</title>{head}</head><body>{body}</body></html>"
    )


MATHJAX = "<script>window.MathJax = {};</script><script defer src='mathjax/tex-mml-chtml.js'></script>"


def notebook(*sources: str) -> str:
    cells = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None} for s in sources]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture(scope="module")
def fixture_site(tmp_path_factory):
    """A tiny site: one clean page, and one page per fault."""
    root = tmp_path_factory.mktemp("site")
    bc.link_mathjax(root)
    (root / "dot.png").write_bytes(PNG)
    (root / "_sources").mkdir()
    pages = {
        # Clean: typeset math (inline, display, a numbered equation), an image, a local link with an
        # anchor, a figure in a notebook's output, a wide code block and a wide table that scroll in their
        # own boxes, a dollar amount that is not math.
        "clean.html": page(
            "<h1 id='top'>Clean</h1><p>Inline <span class='math notranslate nohighlight'>\\(x^2\\)</span>"
            " and a price of $5 or $10.</p>"
            "<div class='math notranslate nohighlight' id='equation-eq-x'>\\[\\sum_i x_i = 1 \\tag{1.1}\\]</div>"
            "<p><img src='dot.png' alt='dot'> <a href='clean.html#top'>top</a> <a href='other.html'>other</a></p>"
            "<div class='cell_output'><div class='output'><img src='dot.png' alt='plot'></div></div>"
            "<div class='highlight' style='overflow-x:auto'><pre>" + "x = 1  # " + "long " * 200 + "</pre></div>"
            "<div style='overflow-x:auto'><table><tr>" + "<td>wide cell</td>" * 80 + "</tr></table></div>"
            "<pre>raw $$ \\( in code is fine</pre>",
            MATHJAX,
        ),
        "other.html": page("<p id='x'>other</p>"),
        "offhost.html": page("<p>x</p><img src='http://203.0.113.7/pixel.png' alt='remote'>",
                             "<script src='https://cdn.example.invalid/lib.js'></script>"),
        "console.html": page("<p>x</p><script>console.error('boom');</script>"
                             "<script>throw new Error('kaput');</script>"),
        "brokenimg.html": page("<p><img src='missing.png' alt='gone'></p>"),
        "rawtex.html": page("<p>The loss is $$L(\\theta)$$.</p>"),
        "rawdollar.html": page("<p>The step size $\\alpha$ is small.</p>"),
        "untypeset.html": page("<p><span class='math notranslate nohighlight'>\\(\\beta\\)</span></p>"),
        "mathjaxerror.html": page("<p><span class='math notranslate nohighlight'>\\(x^^2\\)</span></p>", MATHJAX),
        "undefinedmacro.html": page("<p><span class='math notranslate nohighlight'>\\(\\thetaa\\)</span></p>", MATHJAX),
        "traceback.html": page(
            "<div class='cell_output docutils container'><div class='output traceback highlight-ipythontb notranslate'>"
            "<div class='highlight'><pre>Traceback (most recent call last):\n  File x\nValueError: bad</pre></div></div></div>"
        ),
        "badlink.html": page("<p><a href='other.html#nowhere'>anchor</a> <a href='gone.html'>file</a></p>"),
        "nofigure.html": page("<div class='cell_output'><pre>no picture</pre></div>"),
        "wide.html": page("<div style='width:1000px;background:#eee'>a 1000-pixel-wide box</div>"),
    }
    for name, html in pages.items():
        (root / name).write_text(html, encoding="utf-8")
    (root / "_sources" / "nofigure.ipynb").write_text(notebook("import matplotlib.pyplot as plt\nplt.plot([1, 2])"))
    (root / "_sources" / "clean.ipynb").write_text(notebook("fastadapt.plotting.plot_episode(episode)"))
    problems, visits = bc.check_site(root, pages=sorted(pages))
    return root, problems, visits


def found(problems, check, page):
    return [p for p in problems if p.check == check and p.page.split(" ")[0] == page]


def test_checker_passes_a_clean_page(fixture_site):
    _, problems, visits = fixture_site
    clean = [p for p in problems if p.page.split(" ")[0] in ("clean.html", "other.html")]
    assert clean == [], "\n".join(map(str, clean))
    assert {v.page for v in visits["desktop"]} >= {"clean.html", "other.html"}


@pytest.mark.parametrize("check, page, expected", [
    ("offhost", "offhost.html", "cdn.example.invalid/lib.js"),
    ("offhost", "offhost.html", "203.0.113.7/pixel.png"),
    ("console", "console.html", "boom"),
    ("console", "console.html", "kaput"),
    ("image", "brokenimg.html", "missing.png"),
    ("resource", "brokenimg.html", "HTTP 404 for missing.png"),
    ("tex", "rawtex.html", "$$"),
    ("tex", "rawdollar.html", "$\\alpha$"),
    ("tex", "undefinedmacro.html", "undefined macro \\thetaa"),
    ("tex", "untypeset.html", "left untypeset"),
    ("tex", "mathjaxerror.html", "MathJax error"),
    ("output", "traceback.html", "Traceback"),
    ("link", "badlink.html", "missing anchor: other.html#nowhere"),
    ("link", "badlink.html", "missing file: gone.html"),
    ("figure", "nofigure.html", "1 code cell(s) of the notebook plot"),
    ("sideways", "wide.html", "px wide in a 390 px window"),
])
def test_checker_catches(fixture_site, check, page, expected):
    _, problems, _ = fixture_site
    hits = found(problems, check, page)
    assert any(expected in p.message for p in hits), (
        f"the {check!r} check missed its fault on {page} (wanted {expected!r}); it reported:\n"
        + "\n".join(map(str, problems))
    )


def test_sideways_only_on_the_phone(fixture_site):
    _, problems, _ = fixture_site
    assert [p.page for p in problems if p.check == "sideways"] == ["wide.html (phone)"]


def test_static_offline_check_catches_remote_assets():
    spec = importlib.util.spec_from_file_location("offline_assets", ROOT / "scripts" / "offline_assets.py")
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    html = (
        "<script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'></script>"
        "<link rel='stylesheet' href='//fonts.googleapis.com/css?family=Lato'>"
        "<link rel='canonical' href='https://example.org/book/'>"
        "<a href='https://colab.research.google.com/github/x/y'>Colab</a>"
        "<script src='../_static/local.js'></script><style>@font-face{src:url(https://fonts.gstatic.com/a.woff)}</style>"
    )
    fetches = offline.remote_fetches(html)
    assert any("cdn.jsdelivr.net" in f for f in fetches)
    assert any("fonts.googleapis.com" in f for f in fetches)
    assert any("fonts.gstatic.com" in f for f in fetches)
    assert not any("example.org" in f or "colab" in f or "local.js" in f for f in fetches), fetches


# ------------------------------------------------------------------------------------------------
# The built book


@pytest.fixture(scope="session")
def book_html() -> Path:
    if not (BOOK_HTML / "index.html").is_file():
        if "FASTADAPT_BOOK_HTML" in os.environ:
            pytest.fail(f"{BOOK_HTML}/index.html is missing: build that book first")
        # Stage, execute (nbmake, quick setting) and build the book, as `make test` does.
        subprocess.run(["make", "quick-book"], cwd=ROOT, check=True)
    return BOOK_HTML


@pytest.fixture(scope="session")
def book(book_html):
    pages = bc.pages_of(book_html)
    shots = {}
    chapter = next((p for p in pages if p.startswith("book/0")), None)
    for viewport in ("desktop", "phone"):
        shots[f"{viewport}:index.html"] = SCREENSHOTS / f"{viewport}-start.png"
        if chapter:
            shots[f"{viewport}:{chapter}"] = SCREENSHOTS / f"{viewport}-{Path(chapter).stem}.png"
    problems, visits = bc.check_site(book_html, pages=pages, screenshots=shots)
    return pages, problems, visits, shots


def toc_pages() -> list[str]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files += [s["file"] for s in chapter.get("sections", [])]
    return [f + ".html" for f in files]


def test_every_toc_page_was_built_and_opened(book):
    pages, _, visits, _ = book
    opened = {v.page for v in visits["desktop"]}
    missing = [p for p in toc_pages() if p not in opened]
    assert not missing, f"pages in _toc.yml that the built book lacks: {missing}"
    assert {"index.html", "search.html", "genindex.html"} <= set(pages)
    print(f"\nchecked {len(pages)} pages at 1280 and 390 px: {', '.join(pages)}")


@pytest.mark.parametrize("check", ["console", "offhost", "resource", "image", "tex", "output", "link", "figure",
                                   "sideways"])
def test_book(book, check):
    _, problems, _, _ = book
    hits = [p for p in problems if p.check == check]
    assert not hits, f"{len(hits)} {check} problem(s) in the built book ({BOOK_HTML}):\n" + "\n".join(map(str, hits))


def test_screenshots_saved(book):
    *_, shots = book
    for path in shots.values():
        assert path.is_file() and path.stat().st_size > 1000, f"no screenshot at {path}"


def test_notebook_pages_have_launch_and_download_buttons(book_html):
    notebooks = sorted((book_html / "_sources").rglob("*.ipynb"))
    assert notebooks, "no notebook pages in the book"
    for source in notebooks:
        name = source.relative_to(book_html / "_sources").with_suffix("").as_posix()  # book/01_task_sampling
        html = (book_html / f"{name}.html").read_text(encoding="utf-8")
        colab = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{name}.ipynb"
        binder = f"https://mybinder.org/v2/gh/{REPOSITORY}/{BRANCH}?urlpath=lab/tree/{name}.ipynb"
        assert colab in html, f"{name}.html has no Colab button pointing at {colab}"
        assert binder in html, f"{name}.html has no Binder button pointing at {binder}"
        assert f'href="../_sources/{name}.ipynb"' in html, f"{name}.html has no download button for {name}.ipynb"
        assert "thebe" not in html.lower(), f"{name}.html still loads or mentions thebe"
