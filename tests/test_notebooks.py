"""Static checks of the book's sources (no notebook is run): the conventions of CONTRIBUTING.md that a
machine can check, on every notebook of _toc.yml and every other page in book/. Each failure says which
notebook and what to change.

- every page in book/ is listed in _toc.yml, every listed page exists, and the chapters follow the
  chapter list and parts of CONTRIBUTING.md;
- notebooks are stored without outputs and execution counts;
- the first code cell is the Colab cell, tagged ``hide-cell``;
- ``QUICK`` is defined from ``FASTADAPT_QUICK`` before it is used;
- no ``sys.path`` edits and no ``inspect.getsource`` (show package code with ``literalinclude``);
- every ``{exercise}`` has a label and a collapsed, gated solution: ``solution-start`` (with
  ``:class: dropdown``) and then ``solution-end``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
PAGE_SUFFIXES = (".ipynb", ".md")
SKIP_DIRS = {"_static", "_build", ".ipynb_checkpoints", "__pycache__"}

COLAB_CELL = """\
# On Colab, install the book's package; everywhere else (make book, make test) it is installed already.
import sys

if "google.colab" in sys.modules:
    %pip install -q "fastadapt[book] @ git+https://github.com/fastadapt/fastadapt"
"""
QUICK_LINE = re.compile(r"""^QUICK\s*=\s*os\.environ\.get\(\s*["']FASTADAPT_QUICK["']\s*\)\s*==\s*["']1["']""", re.M)
SYS_PATH = re.compile(r"\bsys\.path\b\s*(\.\s*(insert|append|extend|remove)\b|\[[^\]]*\]\s*=|\+?=)|\bsite\.addsitedir\b")
GETSOURCE = re.compile(r"\bgetsource\b|\bgetsourcelines\b")
FENCE = r"^(?:`{3,}|:{3,})"
EXERCISE = re.compile(FENCE + r"\{exercise\}[^\n]*\n((?:[ \t]*:[\w-]+:[^\n]*\n)*)", re.M)
SOLUTION_START = re.compile(FENCE + r"\{solution-start\}[ \t]*([^\s`]*)[^\n]*\n((?:[ \t]*:[\w-]+:[^\n]*\n)*)", re.M)
SOLUTION_END = re.compile(FENCE + r"\{solution-end\}", re.M)
SOLUTION = re.compile(FENCE + r"\{solution\}[ \t]*([^\s`]*)", re.M)


def toc_files() -> list[tuple[str, str | None]]:
    """(file without suffix, part caption) in reading order; the root page has no part."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    entries = [(toc["root"], None)]

    def chapters(items, part):
        for item in items:
            if "file" in item:
                entries.append((item["file"], part))
            chapters(item.get("sections", []), part)

    caption = None
    for part in toc.get("parts", []):
        caption = part.get("caption", caption)  # a part without a caption continues the one above
        chapters(part.get("chapters", []), caption)
    chapters(toc.get("chapters", []), None)
    return entries


def page_path(entry: str) -> Path | None:
    for suffix in PAGE_SUFFIXES:
        if (ROOT / (entry + suffix)).is_file():
            return ROOT / (entry + suffix)
    return None


def book_pages() -> list[Path]:
    return sorted(
        p for p in BOOK.rglob("*")
        if p.suffix in PAGE_SUFFIXES and p.is_file() and not SKIP_DIRS.intersection(p.relative_to(BOOK).parts)
    )


def toc_notebooks() -> list[Path]:
    """The notebooks of _toc.yml, then any other notebook in book/ (a chapter on its way into the book)."""
    paths = [page_path(entry) for entry, _ in toc_files()]
    listed = [p for p in paths if p is not None and p.suffix == ".ipynb"]
    return listed + [p for p in book_pages() if p.suffix == ".ipynb" and p not in listed]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def code_cells(path: Path) -> list[dict]:
    return [c for c in cells(path) if c.get("cell_type") == "code"]


NOTEBOOKS = toc_notebooks()
IDS = [p.name for p in NOTEBOOKS]


def test_every_page_in_book_is_in_the_toc():
    listed = {entry for entry, _ in toc_files()}
    pages = book_pages()
    unlisted = [p.relative_to(ROOT).as_posix() for p in pages if p.relative_to(ROOT).with_suffix("").as_posix() not in listed]
    assert not unlisted, (
        f"pages in book/ that _toc.yml does not list (the book would not show them): {unlisted}; "
        "add each under its part in _toc.yml (see the chapter table in CONTRIBUTING.md), or delete it"
    )
    missing = [entry for entry in sorted(listed) if page_path(entry) is None]
    assert not missing, f"_toc.yml lists pages that do not exist (no .ipynb or .md): {missing}"


def contributing_chapters() -> list[tuple[str, str | None]]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`(book/[^`]+)`\s*\|[^|]*\|\s*([^|]*?)\s*\|\s*$", text, re.M)
    return [(Path(f).with_suffix("").as_posix(), part or None) for f, part in rows]


@pytest.mark.skipif(not (ROOT / "CONTRIBUTING.md").is_file(), reason="no CONTRIBUTING.md")
def test_toc_follows_the_chapter_list_of_contributing():
    final = contributing_chapters()
    assert final, "CONTRIBUTING.md has no chapter table (| `book/...` | title | part |)"
    order = {f: i for i, (f, _) in enumerate(final)}
    parts = dict(final)
    problems = []
    entries = toc_files()
    for entry, part in entries:
        if entry not in order:
            problems.append(f"{entry}: not in CONTRIBUTING.md's chapter list (rename it to its final file name "
                            "there, or add it to the list)")
        elif parts[entry] != part:
            problems.append(f"{entry}: listed under part {part!r} in _toc.yml, but CONTRIBUTING.md puts it in "
                            f"{parts[entry]!r}")
    known = [entry for entry, _ in entries if entry in order]
    if known != sorted(known, key=order.get):
        problems.append(f"_toc.yml's order {known} differs from CONTRIBUTING.md's {sorted(known, key=order.get)}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    dirty = [i + 1 for i, c in enumerate(code_cells(path)) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, (
        f"{path.relative_to(ROOT)}: code cells {dirty} (counting code cells from 1) are stored with outputs or "
        "execution counts; clear them before committing (Jupyter: Edit > Clear Outputs of All Cells, or "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_is_the_colab_cell(path):
    code = code_cells(path)
    assert code, f"{path.relative_to(ROOT)} has no code cell"
    first = code[0]
    where = f"{path.relative_to(ROOT)}: the first code cell"
    if source(first).strip() != COLAB_CELL.strip():
        pytest.fail(
            f"{where} must be exactly the Colab cell of CONTRIBUTING.md (insert it after the title and the "
            f"objectives, before the setup cell, tagged hide-cell):\n\n{COLAB_CELL}\nit is:\n\n"
            f"{source(first)[:300]}...", pytrace=False)
    tags = first.get("metadata", {}).get("tags", [])
    assert "hide-cell" in tags, f"{where} (the Colab cell) must be tagged hide-cell (its tags: {tags})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_quick_comes_from_the_environment(path):
    code = [source(c) for c in code_cells(path)]
    defining = [i for i, s in enumerate(code) if QUICK_LINE.search(s)]
    assert defining, (
        f"{path.relative_to(ROOT)}: no cell defines QUICK from the environment; the setup cell needs the line\n"
        '    QUICK = os.environ.get("FASTADAPT_QUICK") == "1"\n'
        "(CI and `make test` set FASTADAPT_QUICK=1; see 'The compute budget cell' in CONTRIBUTING.md)"
    )
    used_before = [i + 1 for i, s in enumerate(code[: defining[0]]) if re.search(r"\bQUICK\b", s)]
    assert not used_before, (f"{path.relative_to(ROOT)}: code cells {used_before} (counting from 1) use QUICK "
                             "before it is defined")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_sys_path_edits_and_no_getsource(path):
    problems = []
    for i, cell in enumerate(code_cells(path)):
        text = source(cell)
        for line in text.splitlines():
            if SYS_PATH.search(line.split("#", 1)[0]):
                problems.append(f"code cell {i + 1}: {line.strip()!r} edits sys.path; import the installed package "
                                "(`import fastadapt`) instead")
            if GETSOURCE.search(line.split("#", 1)[0]):
                problems.append(f"code cell {i + 1}: {line.strip()!r} prints source code; show package code with a "
                                "```{literalinclude} ../src/fastadapt/...``` block with :pyobject: in a markdown cell")
    if problems:
        pytest.fail(f"{path.relative_to(ROOT)}:\n" + "\n".join(problems), pytrace=False)


def exercise_problems(name: str, markdown: list[str], notebook: bool) -> list[str]:
    """Every exercise has a label and, after it, a gated solution with that label (or, in a markdown page,
    a `{solution}` directive); solution-start/solution-end come in pairs."""
    problems, exercises, started, solved = [], [], None, set()
    for i, text in enumerate(markdown):
        events = sorted(
            [(m.start(), "exercise", m) for m in EXERCISE.finditer(text)]
            + [(m.start(), "start", m) for m in SOLUTION_START.finditer(text)]
            + [(m.start(), "end", m) for m in SOLUTION_END.finditer(text)]
            + [(m.start(), "solution", m) for m in SOLUTION.finditer(text)],
            key=lambda e: e[0],
        )
        for _, kind, m in events:
            if kind == "exercise":
                label = re.search(r":label:\s*(\S+)", m.group(1))
                if not label:
                    problems.append(f"cell {i}: an exercise without a :label: (e.g. :label: ex-<chapter>-1)")
                else:
                    exercises.append(label.group(1))
            elif kind == "start":
                label = m.group(1)
                if started is not None:
                    problems.append(f"cell {i}: solution-start {label} before the solution-end of {started}")
                if label not in exercises:
                    problems.append(f"cell {i}: solution-start {label!r} does not follow an exercise labelled {label!r}")
                if not re.search(r":class:\s*dropdown", m.group(2)):
                    problems.append(f"cell {i}: solution-start {label} needs ':class: dropdown' (solutions are collapsed)")
                started = label
            elif kind == "end":
                if started is None:
                    problems.append(f"cell {i}: solution-end without a solution-start")
                else:
                    solved.add(started)
                    started = None
            elif kind == "solution":
                if notebook:
                    problems.append(f"cell {i}: a {{solution}} directive; notebooks use the gated solution-start/"
                                    "solution-end pair around the solution's cells")
                solved.add(m.group(1))
    if started is not None:
        problems.append(f"solution-start {started} has no solution-end (a markdown cell holding only "
                        "````{solution-end}```` after the solution's code cells)")
    for label in exercises:
        if label not in solved:
            problems.append(f"exercise {label} has no solution (a solution-start {label} ... solution-end pair)")
    return [f"{name}: {p}" for p in problems]


@pytest.mark.parametrize("path", book_pages(), ids=lambda p: p.name)
def test_every_exercise_has_a_gated_solution(path):
    if path.suffix == ".ipynb":
        markdown = [source(c) if c.get("cell_type") == "markdown" else "" for c in cells(path)]
    else:
        markdown = [path.read_text(encoding="utf-8")]
    problems = exercise_problems(path.relative_to(ROOT).as_posix(), markdown, path.suffix == ".ipynb")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_exercise_check_can_fail():
    fence = "```"
    good = [f"{fence}{{exercise}}\n:label: ex-x-1\n\nDo it.\n{fence}",
            f"````{{solution-start}} ex-x-1\n:class: dropdown\n````\nBecause.", "", "````{solution-end}\n````"]
    assert exercise_problems("nb", good, True) == []
    assert any("has no solution" in p for p in exercise_problems("nb", good[:1], True))
    assert any("no solution-end" in p for p in exercise_problems("nb", good[:2], True))
    assert any("dropdown" in p for p in exercise_problems("nb", [good[0], good[1].replace(":class: dropdown", ""), good[3]], True))
    assert any("without a :label:" in p for p in exercise_problems("nb", [good[0].replace(":label: ex-x-1\n", "")], True))
    assert any("does not follow" in p for p in exercise_problems("nb", [good[1], good[3]], True))


def test_static_patterns_can_fail():
    assert SYS_PATH.search('sys.path.insert(0, "../src")') and SYS_PATH.search("sys.path += ['x']")
    assert not SYS_PATH.search('if "google.colab" in sys.modules:')
    assert GETSOURCE.search("print(inspect.getsource(MAML))")
    assert QUICK_LINE.search('QUICK = os.environ.get("FASTADAPT_QUICK") == "1"  # CI sets it')
    assert not QUICK_LINE.search("QUICK = True")
