"""fastadapt.results: where committed results are found, and the download path tested through file:// URLs."""
import json

import pytest

from fastadapt import results


def test_repository_results_found_from_a_subfolder(tmp_path):
    (tmp_path / "results" / "omniglot").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "book" / "deep").mkdir(parents=True)
    assert results.repository_results(tmp_path / "book" / "deep") == (tmp_path / "results").resolve()
    assert results.repository_results(tmp_path.parent / "elsewhere") in (None, results.repository_results())


def test_environment_folder_wins(tmp_path, monkeypatch):
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "cell.json").write_text(json.dumps({"accuracy": 0.5}))
    monkeypatch.setenv("FASTADAPT_RESULTS", str(tmp_path))
    assert results.load_result("omniglot/cell.json") == {"accuracy": 0.5}


def test_download_through_file_url_into_the_cache(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    (remote / "omniglot").mkdir(parents=True)
    (remote / "omniglot" / "fetched-only.json").write_text(json.dumps({"tasks": 600}))
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTADAPT_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)  # no repository above: only the cache and the download remain
    base = remote.as_uri()
    assert results.find_result("omniglot/fetched-only.json", download=False) is None
    path = results.find_result("omniglot/fetched-only.json", base_url=base)
    assert path == tmp_path / "cache" / "results" / "omniglot" / "fetched-only.json"
    assert json.loads(path.read_text()) == {"tasks": 600}
    assert results.find_result("omniglot/missing.json", base_url=base) is None  # 404 -> None, nothing left behind
    assert list((tmp_path / "cache" / "results" / "omniglot").iterdir()) == [path]


def test_no_download_inside_a_repository(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    (remote / "omniglot").mkdir(parents=True)
    (remote / "omniglot" / "cell.json").write_text("{}")
    (tmp_path / "repo" / "results").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTADAPT_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path / "repo")  # a file the repository lacks has not been produced yet
    assert results.find_result("omniglot/cell.json", base_url=remote.as_uri()) is None
    assert not (tmp_path / "cache").exists()


def test_paths_outside_results_are_refused():
    with pytest.raises(ValueError, match="inside results/"):
        results.find_result("../secrets.json")


def test_source_commit_is_head_and_marks_changes_to_the_watched_paths(tmp_path):
    """Against git itself, in a fresh repository: HEAD's hash, "-dirty" only when a watched path changed."""
    import subprocess

    from fastadapt.results import source_commit

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    assert source_commit(tmp_path) == "unknown"  # not a repository yet
    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert source_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("b\n")  # outside the watched paths
    assert source_commit(tmp_path) == head
    assert source_commit(tmp_path, (".",)) == head + "-dirty"
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == head + "-dirty"
