"""The book's configuration (_config.yml, scripts/offline_assets.py) on a tiny book of its own, whatever state
the chapters are in: built with the real _config.yml and -W, then opened in Chromium.

It shows that inline math, display math, numbered equations referenced across chapters as (chapter.number),
a text/latex cell output, an exercise with a gated solution spanning cells, a citation, launch and
download buttons all build without a warning and render offline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("playwright", reason="the browser test needs Playwright (in requirements.txt)")

import browser_check as bc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text, outputs=(), tags=()):
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": text,
            "execution_count": 1 if outputs else None, "outputs": list(outputs)}


def write_notebook(path, cells):
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }))


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    src = tmp_path_factory.mktemp("tinybook")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # outputs are stored in the fixture notebooks
    config["title"] = "tiny"
    config["bibtex_bibfiles"] = ["book/references.bib"]
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (src / "scripts").symlink_to(ROOT / "scripts", target_is_directory=True)
    (src / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro", "defaults": {"numbered": True},
        "parts": [
            {"caption": "Foundations", "numbered": True, "chapters": [{"file": "book/01_one"}]},
            {"caption": "Evaluation", "numbered": True, "chapters": [{"file": "book/02_two"}]},
        ],
    }, sort_keys=False))
    book = src / "book"
    book.mkdir()
    (book / "references.bib").write_text(
        "@article{lake2015omniglot,\n  author = {Lake, Brenden M. and Salakhutdinov, Ruslan and Tenenbaum, Joshua B.},\n"
        "  title = {Human-level concept learning through probabilistic program induction},\n"
        "  journal = {Science}, volume = {350}, pages = {1332--1338}, year = {2015}\n}\n"
    )
    (book / "intro.md").write_text(
        "# Tiny\n\nThe inner step\n\n$$\n\\phi = \\theta - \\alpha \\nabla_\\theta \\mathcal{L}(\\theta)\n$$ (eq-inner)\n\n"
        "Omniglot {cite:p}`lake2015omniglot`. Chapters: {doc}`01_one`, {doc}`02_two`.\n\n"
        "```{bibliography}\n```\n"
    )
    write_notebook(book / "01_one.ipynb", [
        md("# One\n\nInline $\\mathcal{T}_i$ and $N$-way, and a numbered equation:\n\n"
           "$$\n\\mathcal{L}_{\\text{meta}}(\\theta) = \\frac{1}{B}\\sum_{i=1}^{B} \\mathcal{L}(\\phi_i)\n$$ (eq-one)\n\n"
           "It uses {eq}`eq-inner`."),
        code("import matplotlib.pyplot as plt\nplt.plot([1, 2])", [
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}},
        ]),
        code("from IPython.display import Math\nMath(r'\\alpha^2 + \\beta_1')", [
            {"output_type": "execute_result", "execution_count": 1, "metadata": {},
             "data": {"text/latex": "$\\displaystyle \\alpha^2 + \\beta_1$", "text/plain": "<Math>"}},
        ]),
        md("```{exercise}\n:label: ex-one-1\n\nCompute $1 + 1$.\n```"),
        md("````{solution-start} ex-one-1\n:class: dropdown\n````\nIt is two."),
        code("assert 1 + 1 == 2"),
        md("````{solution-end}\n````"),
    ])
    write_notebook(book / "02_two.ipynb", [
        md("# Two\n\n$$\nx = 1\n$$ (eq-two)\n\nBack to {eq}`eq-one` and {eq}`eq-inner`; see {ref}`ex-one-1`."),
        code("print('hello')", [{"output_type": "stream", "name": "stdout", "text": "hello\n"}]),
    ])
    result = subprocess.run([str(JUPYTER_BOOK), "build", str(src), "-W", "--all"], capture_output=True, text=True)
    assert result.returncode == 0, f"the tiny book did not build with -W:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return src / "_build" / "html"


def test_equations_are_numbered_by_chapter(tiny_book):
    one = (tiny_book / "book" / "01_one.html").read_text()
    two = (tiny_book / "book" / "02_two.html").read_text()
    assert re.search(r'id="equation-eq-one"[\s\S]{0,400}?\(1\.1\)', one), "eq-one is not numbered (1.1)"
    assert re.search(r'id="equation-eq-two"[\s\S]{0,400}?\(2\.1\)', two), "eq-two is not numbered (2.1)"
    refs = re.findall(r'<a class="reference internal" href="([^"]*#equation-eq-one)"><span class="std std-ref">([^<]*)</span>', two) or \
        re.findall(r'href="([^"]*#equation-eq-one)"[^>]*>[\s\S]{0,80}?\((1\.1)\)', two)
    assert refs, "{eq}`eq-one` in chapter 2 does not link to (1.1)"
    # The root page is not a chapter: its equations are (1), (2), ... and chapters refer to them so.
    assert 'href="intro.html#equation-eq-inner">(1)' in two, "{eq}`eq-inner` (root page) is not (1) in chapter 2"


def test_offline_and_typeset_in_a_browser(tiny_book):
    problems, visits = bc.check_site(tiny_book)
    assert not problems, "\n".join(map(str, problems))
    assert (tiny_book / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert (tiny_book / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def test_exercise_solution_is_gated_and_collapsed(tiny_book):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup((tiny_book / "book" / "01_one.html").read_text(), "html.parser")
    assert soup.find(id="ex-one-1"), "the exercise has no anchor ex-one-1"
    solution = soup.select_one("div.solution.dropdown")
    assert solution, "no collapsed (dropdown) solution"
    text = " ".join(solution.get_text(" ").split())
    assert "Solution to Exercise 1.1" in text, f"the solution is not titled after Exercise 1.1 (numbered by chapter): {text[:80]}"
    assert "It is two." in text and "assert 1 + 1 == 2" in text, (
        f"the solution dropdown does not hold both its explanation and its code cell: {text[:200]}"
    )


def test_launch_and_download_buttons(tiny_book):
    one = (tiny_book / "book" / "01_one.html").read_text()
    assert "https://colab.research.google.com/github/fastadapt/fastadapt/blob/main/book/01_one.ipynb" in one
    assert "https://mybinder.org/v2/gh/fastadapt/fastadapt/main?urlpath=lab/tree/book/01_one.ipynb" in one
    assert "../_sources/book/01_one.ipynb" in one
    assert "thebe" not in one.lower()
