"""Sphinx extension (listed in _config.yml): the built book serves everything it needs itself.

- MathJax 3 comes from the PyPI package ``django-static-mathjax`` (pinned in requirements.txt; MathJax
  3.2.2, Apache-2.0, no dependencies), which installs MathJax's own release files under
  ``mathjax/static/mathjax/``. The parts a page can load (the combined TeX+MathML component, the TeX
  extensions it autoloads, the CHTML web fonts, the menu, accessibility and speech modules) are copied
  into ``_build/html/_static/mathjax/``; ``mathjax_path`` in _config.yml points at them.
- After the build, every HTML page is checked: a ``<script src>``, ``<link href>`` (styles, fonts,
  preloads) or ``<img src>`` / ``<iframe src>`` that points at another host is a build error. Ordinary
  links (``<a href>``: the launch and repository buttons) are not fetched when a page is viewed and
  are allowed.
- The book's own stylesheet, ``scripts/book_static/fastadapt.css`` (long inline code may wrap on a phone),
  is served from ``_static/`` and linked from every page.

The browser test (tests/book/) checks the same thing where it matters, in Chromium.
"""

from __future__ import annotations

import re
import shutil
from importlib.util import find_spec
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# What a page may load from MathJax's es5 folder (the rest: other combined components, SVG output).
MATHJAX_PARTS = ["tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors"]

# A tag that makes the browser fetch something when the page is viewed, and the attribute it fetches.
FETCHING = re.compile(
    r"<(script|img|iframe|source|video|audio|embed)\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']"
    r"|<(link)\b[^>]*?\bhref\s*=\s*[\"']([^\"']+)[\"']",
    re.IGNORECASE,
)
CSS_URL = re.compile(r"url\(\s*[\"']?((?:https?:)?//[^)\"']+)", re.IGNORECASE)
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def mathjax_source() -> Path:
    spec = find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError(
            "MathJax is missing: install the pinned requirements (`make venv`), which include "
            "django-static-mathjax"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (root / "tex-mml-chtml.js").is_file():
        raise ExtensionError(f"{root}/tex-mml-chtml.js not found: reinstall django-static-mathjax")
    return root


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    license_file = source.parent / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, target / "LICENSE")


def remote_fetches(html: str) -> list[str]:
    """Addresses on another host that a browser fetches when it shows this HTML (scripts, styles,
    fonts, images, frames; not ordinary links)."""
    found = []
    for match in FETCHING.finditer(html):
        tag, url = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        if tag.lower() == "link":
            rel = re.search(r"\brel\s*=\s*[\"']([^\"']+)", match.group(0), re.IGNORECASE)
            rels = set((rel.group(1) if rel else "").lower().split())
            # canonical/alternate links are not fetched; everything else (stylesheet, preload, icon,
            # modulepreload, prefetch, dns-prefetch, preconnect) is, or opens a connection.
            if rels and rels <= {"canonical", "alternate", "author", "license", "help", "next", "prev",
                                 "search", "index", "top", "up", "first", "last", "copyright"}:
                continue
        if REMOTE.match(url):
            found.append(f"<{tag.lower()}> {url}")
    for match in CSS_URL.finditer(html):
        found.append(f"url() {match.group(1)}")
    return found


def check_offline(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    problems = []
    for path in sorted(outdir.rglob("*.html")):
        if "_static" in path.relative_to(outdir).parts:
            continue
        for fetch in remote_fetches(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path.relative_to(outdir)}: {fetch}")
    for path in sorted((outdir / "_static").rglob("*.css")):
        for match in CSS_URL.finditer(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path.relative_to(outdir)}: url() {match.group(1)}")
    if problems:
        raise ExtensionError(
            "the book would fetch from another host when viewed (it must work offline):\n  "
            + "\n  ".join(problems)
        )


def add_book_static(app: Sphinx) -> None:
    """Serve scripts/book_static/ (the book's own CSS) from _static/, next to the theme's files."""
    app.config.html_static_path.append(str(Path(__file__).parent / "book_static"))


def setup(app: Sphinx) -> dict:
    mathjax_source()  # fail early, before any notebook runs, when MathJax is not installed
    app.connect("builder-inited", add_book_static)
    app.add_css_file("fastadapt.css")
    # Registered in this order: copy first, then check the finished site.
    app.connect("build-finished", copy_mathjax)
    app.connect("build-finished", check_offline)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
