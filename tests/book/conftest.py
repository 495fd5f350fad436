"""The browser tests run when asked for by path (`pytest tests/book`, as `make test-browser` does), not as
part of a plain `pytest` or `pytest tests`: without a built book they would first execute every notebook."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    start = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (start / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return
    skip = pytest.mark.skip(reason="the book's browser tests run with `pytest tests/book` or `make test`")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
