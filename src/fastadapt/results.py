"""Committed results: find them in the repository, or fetch them from it, for the chapters to load.

Long trainings are run once by scripts in the repository and committed under `results/`; a chapter
loads the result instead of retraining. Where to look, in order:
1. the folder named by $FASTADAPT_RESULTS;
2. `results/` in the repository that holds the current working directory (found by walking up to the
   folder with pyproject.toml and results/: the book runs notebooks in book/ or in a staging copy);
3. the cache $FASTADAPT_CACHE/results, downloading the file from the repository on GitHub when it is
   not there yet and no repository holds the working directory (a reader on Colab has the package but
   not the repository; inside the repository a missing file simply has not been produced yet).
A chapter retrains in its quick setting when none of these has the file.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

RESULTS_URL = "https://raw.githubusercontent.com/fastadapt/fastadapt/main/results"


def repository_results(start: str | Path | None = None) -> Path | None:
    """The results/ folder of the repository holding `start` (default: the working directory), or None."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here.resolve(), *here.resolve().parents):
        if (folder / "pyproject.toml").is_file() and (folder / "results").is_dir():
            return folder / "results"
    return None


def source_commit(root: str | Path, paths: tuple[str, ...] = ("src",)) -> str:
    """The git commit of the repository at root, with "-dirty" when `paths` have uncommitted changes; "unknown"
    outside a git checkout. Scripts that write results/ record it as the result's provenance."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _cache_results() -> Path:
    from .data import cache_dir

    return cache_dir() / "results"


def _download(url: str, path: Path) -> None:
    """Copy url into path through a temporary file, so a failed download leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def find_result(relative: str | Path, download: bool = True, base_url: str = RESULTS_URL) -> Path | None:
    """Path of results/<relative> (local, cached or downloaded), or None when it is nowhere to be had."""
    relative = Path(relative)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{relative} must be a path inside results/, like 'omniglot/maml-5w1s.json'.")
    repository = repository_results()
    for folder in (os.environ.get("FASTADAPT_RESULTS"), repository, _cache_results()):
        if folder and (Path(folder) / relative).is_file():
            return Path(folder) / relative
    if not download or repository is not None:
        return None
    target = _cache_results() / relative
    try:
        _download(f"{base_url}/{relative.as_posix()}", target)
    except (OSError, ValueError):  # offline, HTTP 404, bad URL: the caller falls back to retraining
        return None
    return target


def load_result(relative: str | Path, **kwargs) -> dict | None:
    """The JSON object of results/<relative>, or None when the file is nowhere to be had."""
    path = find_result(relative, **kwargs)
    return None if path is None else json.loads(path.read_text())
