"""Stage the book for `make test`: a copy of the book sources in which nbmake executes every notebook once
(quick setting) and Jupyter Book then builds the HTML from those executed notebooks, execution off.

    python scripts/build_book.py stage [--dest _quickbook] [--book-from DIR]

writes DEST/_config.yml (the repository's, with ``execute_notebooks: off``), DEST/_toc.yml, a copy of
book/, and links to the repository's src/, results/, scripts/ and benchmarks/ so that
``literalinclude`` paths such as ``../src/fastadapt/core.py`` and the committed results resolve as
they do in book/ (and DEST lies inside the repository, so a notebook that walks up from its folder
finds the repository too). ``--book-from`` copies the notebooks from another folder (e.g. a snapshot
of the committed ones) instead of book/.

DEST is not under _build/: nbmake skips every notebook whose path has a `_build` folder in it.

The Makefile then runs, in order (see `make test`):
    FASTADAPT_QUICK=1 pytest -n 2 --nbmake --overwrite DEST/book     # every notebook, once
    jupyter-book build DEST -W                                        # HTML into DEST/_build/html
    pytest tests/book                                                 # the browser test
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LINKED = ["src", "results", "scripts", "benchmarks"]


def stage(dest: Path, book_from: Path) -> None:
    dest = dest if dest.is_absolute() else ROOT / dest
    if ROOT not in dest.resolve().parents:
        sys.exit(f"the staging folder must lie inside the repository ({ROOT}), not {dest}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    execute = config.setdefault("execute", {})
    execute["execute_notebooks"] = "off"  # nbmake has executed the notebooks already
    execute.pop("cache", None)
    header = "# Staged by scripts/build_book.py from ../../_config.yml: execution off (nbmake ran the notebooks).\n"
    (dest / "_config.yml").write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.copy2(ROOT / "_toc.yml", dest / "_toc.yml")

    shutil.copytree(book_from, dest / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for name in LINKED:
        if (ROOT / name).exists():
            (dest / name).symlink_to(os.path.relpath(ROOT / name, dest), target_is_directory=True)
    notebooks = sorted(p.relative_to(dest) for p in (dest / "book").rglob("*.ipynb"))
    print(f"staged {len(notebooks)} notebooks in {dest.relative_to(ROOT)}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage", help="copy the book sources into DEST with execution off")
    p.add_argument("--dest", type=Path, default=Path("_quickbook"))
    p.add_argument("--book-from", type=Path, default=ROOT / "book",
                   help="folder to copy the chapters from (default: book/)")
    args = parser.parse_args()
    if args.command == "stage":
        stage(args.dest, args.book_from.resolve())


if __name__ == "__main__":
    main()
