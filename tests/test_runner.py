"""The resumable table runner (scripts/reproduce.py) on the CPU with tiny settings: a budget that ends in the middle
of a run writes a result marked incomplete, and a second call continues the run from its checkpoint and finishes it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fastadapt import read_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"algorithm", "n_way", "k_shot", "split", "accuracy", "ci95", "tasks", "transductive", "protocol", "paper",
        "iterations_done", "iterations_total", "complete", "device", "wall_time_s", "commit", "command", "run"}
TINY = ["--set=meta_batch_size=2", "--set=n_query=1", "--set=log_every=1", "--set=checkpoint_every=2"]


def runner(results: Path, *args: str) -> str:
    """Run scripts/reproduce.py for the MAML 5-way 1-shot cell; returns its output."""
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--cells", "maml-5w1s", "--results",
               str(results), "--device", "cpu", "--processes", "1", "--test-tasks", "4", *TINY, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_runner_stops_within_its_budget_and_a_second_call_finishes(tmp_path):
    # 1. A budget far too short for 100,000 iterations: the job is told to stop, saves, evaluates what it has
    first = runner(tmp_path, "--budget-minutes", "0.9", "--eval-minutes", "0.45", "--set=iterations=100000")
    cell = json.loads((tmp_path / "omniglot" / "maml-5w1s.json").read_text())
    assert KEYS <= set(cell), sorted(KEYS - set(cell))
    assert cell["complete"] is False and cell["iterations_total"] == 100_000, first
    done = cell["iterations_done"]
    assert 0 < done < 100_000
    run = tmp_path / cell["run"]
    assert cell["run"] == "omniglot/runs/maml-5w1s" and sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.json", "metrics.jsonl"]
    assert read_checkpoint(run / "checkpoint.pt")["iteration"] == done
    assert (run / "checkpoint.pt").stat().st_size < 2 * 2 ** 20
    assert (cell["algorithm"], cell["n_way"], cell["k_shot"], cell["split"], cell["tasks"]) == (
        "maml", 5, 1, "vinyals", 4)
    assert cell["transductive"] is True and cell["protocol"]["iterations"] == 60_000 and cell["device"] == "cpu"
    assert cell["paper"]["accuracy"] == 0.987 and "Finn" in cell["paper"]["source"]
    assert 0 <= cell["accuracy"] <= 1 and "reproduce.py" in cell["command"] and cell["commit"]
    first_time = cell["wall_time_s"]

    # 2. The same call with three more iterations to go: it resumes from the checkpoint and completes
    second = runner(tmp_path, "--budget-minutes", "3", "--eval-minutes", "1", f"--set=iterations={done + 3}")
    cell = json.loads((tmp_path / "omniglot" / "maml-5w1s.json").read_text())
    assert cell["complete"] is True and cell["iterations_done"] == cell["iterations_total"] == done + 3, second
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, done + 4))  # one curve across both sessions
    times = [r["time_s"] for r in records]
    assert times == sorted(times), "time_s is wall-clock time counted on across resumes"
    assert cell["wall_time_s"] >= times[-1] >= first_time - cell["eval_time_s"] - 60

    # 3. Nothing left to do: a third call starts no job
    third = runner(tmp_path, "--budget-minutes", "1", f"--set=iterations={done + 3}")
    assert "0 jobs to run" in third and "not complete: none" in third
