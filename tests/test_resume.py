"""Never lose a run: checkpoints, --resume, interrupted and killed runs, atomic writes, refusals, NaN.

A resumed run must equal an uninterrupted one bit for bit (torch.equal on the CPU): the episodes
are a pure function of (seed, iteration, rank), and the checkpoint holds the parameters and the
optimizer state.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fastadapt import TrainConfig, TrainingDiverged, cli, load_checkpoint, read_checkpoint, read_metrics, train
from fastadapt.algorithms import FOMAML, Reptile
from fastadapt.data import save_atomic

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["checkpoint.pt", "config.json", "metrics.jsonl"]
TINY = dict(algo="fomaml", n_way=5, k_shot=1, n_query=1, meta_batch_size=2, inner_steps=1, val_every=0,
            log_every=1, checkpoint_every=1, seed=7)



def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def run(config: TrainConfig, out: Path, data, resume: bool = False) -> dict:
    return train(config, out, resume=resume, device="cpu", progress=False, data=data)


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def assert_same_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k].cpu(), want[k].cpu()), f"parameter {k} differs"


def assert_same_optimizer(got: dict, want: dict) -> None:
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for i, state in want["state"].items():
        for name, value in state.items():
            other = got["state"][i][name]
            assert torch.equal(torch.as_tensor(other), torch.as_tensor(value)), f"optimizer state {i}.{name} differs"


def assert_no_leftovers(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES, "temporary or stray files left behind"


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory, omniglot):
    """A finished 1-iteration run of TINY (checkpoint_every=1), to copy into tests that need a checkpoint."""
    out = tmp_path_factory.mktemp("one_iteration")
    run(tiny(iterations=1), out, omniglot)
    return out


@pytest.fixture
def run_copy(one_iteration, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_iteration, out)
    return out


# (a) checkpoint round trip -----------------------------------------------------------------------------------------

def interrupt_at(monkeypatch, cls, call: int) -> None:
    """Deliver SIGINT to this process during the `call`-th meta-gradient of cls, like Ctrl-C in a terminal."""
    original = cls.meta_gradient
    calls = []

    def meta_gradient(self, params, episode):
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signal.SIGINT)
        return original(self, params, episode)

    monkeypatch.setattr(cls, "meta_gradient", meta_gradient)


@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_resume_equals_uninterrupted_run(algo, tmp_path, monkeypatch, omniglot):
    n, k = 3, 2
    if algo == "maml":  # Adam state and validation records; stopped by a shorter run, resumed with more iterations
        config = tiny(algo="maml", iterations=n, val_every=3, val_tasks=2, checkpoint_every=5)
        run(replace(config, iterations=k), tmp_path / "resumed", omniglot)
    else:  # SGD with the step size annealed to 0 at config.iterations: stopped by SIGINT, same iterations
        config = tiny(algo="reptile", iterations=n, inner_lr=0.1, meta_lr=1.0, log_every=2, checkpoint_every=5)
        interrupt_at(monkeypatch, Reptile, k)
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path / "resumed", omniglot)
        monkeypatch.undo()
    assert read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["iteration"] == k
    straight = run(config, tmp_path / "straight", omniglot)
    resumed = run(config, tmp_path / "resumed", omniglot, resume=True)

    assert_same_params(resumed, straight)
    a, b = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("straight", "resumed"))
    assert a["iteration"] == b["iteration"] == n
    assert_same_params(b["params"], a["params"])
    assert_same_optimizer(b["optimizer"], a["optimizer"])
    records = without_time(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert records == without_time(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert records[-1]["iteration"] == n
    if algo == "maml":
        assert "val_accuracy" in records[-1]
    for d in ("straight", "resumed"):
        assert_no_leftovers(tmp_path / d)


def test_resume_truncates_metrics_written_after_the_checkpoint(run_copy, omniglot):
    """After a crash the log may run ahead of the checkpoint; resuming drops those lines, so none are doubled."""
    with open(run_copy / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"iteration": 2, "loss": 9.0, "accuracy": 0.0, "time_s": 1.0}) + "\n")
    run(tiny(iterations=2), run_copy, omniglot, resume=True)
    records = read_metrics(run_copy / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2]
    assert records[1]["loss"] != 9.0


def test_resume_after_a_torn_metrics_line(run_copy, omniglot):
    with open(run_copy / "metrics.jsonl", "a") as log:
        log.write('{"iteration": 2, "accuracy": 0.4')  # the crash came in the middle of the write
    run(tiny(iterations=2), run_copy, omniglot, resume=True)
    assert [r["iteration"] for r in read_metrics(run_copy / "metrics.jsonl")] == [1, 2]


def test_existing_run_is_not_overwritten_without_resume(run_copy, omniglot):
    before = (run_copy / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"checkpoint\.pt exists; pass resume=True"):
        run(tiny(iterations=2), run_copy, omniglot)
    assert (run_copy / "checkpoint.pt").read_bytes() == before


# (b) interrupting and killing a real run ---------------------------------------------------------------------------

KILLS = {  # case: (signal, algorithm); SIGTERM is tested in-process below. protonet: no torch.func import (faster)
    "SIGINT": (signal.SIGINT, "protonet"),
    "SIGKILL": (signal.SIGKILL, "protonet"),
}


def cli_args(algo: str) -> list[str]:
    return ["train", "--algo", algo, "--n-way", "5", "--k-shot", "1", "--n-query", "1", "--meta-batch-size", "2",
            "--val-every", "0", "--log-every", "1", "--checkpoint-every", "1", "--seed", "7", "--device", "cpu"]


def progress(out: Path) -> int:
    """Iteration of the checkpoint in out, 0 if none yet."""
    try:
        return read_checkpoint(out / "checkpoint.pt")["iteration"]
    except (FileNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Start one real `python -m fastadapt train` per case at once, signal each after 2 checkpointed iterations."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    runs = {}
    for case, (sig, algo) in KILLS.items():
        out = tmp_path_factory.mktemp(case) / "run"
        log, stdout = open(out.parent / "stderr.txt", "w"), open(out.parent / "stdout.txt", "w")
        # far more iterations than it will get through: the signal, not the end, stops it
        command = [sys.executable, "-m", "fastadapt", *cli_args(algo), "--iterations", "100000", "--out", str(out)]
        runs[case] = dict(out=out, sig=sig, algo=algo, files=(log, stdout),
                          process=subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=log))
    deadline = time.monotonic() + 240
    try:
        pending = set(runs)
        while pending and time.monotonic() < deadline:
            for case in sorted(pending):
                r = runs[case]
                log = (r["out"].parent / "stderr.txt").read_text()[-3000:]
                assert r["process"].poll() is None, f"{case} run exited early:\n{log}"
                if progress(r["out"]) >= 2:
                    r["process"].send_signal(r["sig"])
                    pending.discard(case)
            time.sleep(0.05)
        assert not pending, f"no progress within the time limit: {sorted(pending)}"
        for r in runs.values():
            r["returncode"] = r["process"].wait(timeout=120)
    finally:
        for r in runs.values():
            if r["process"].poll() is None:
                r["process"].kill()
                r["process"].wait()
            for f in r["files"]:
                f.close()
    for r in runs.values():
        r["stderr"] = (r["out"].parent / "stderr.txt").read_text()
        r["stdout"] = (r["out"].parent / "stdout.txt").read_text()
    return runs


@pytest.mark.parametrize("case", list(KILLS))
def test_interrupted_or_killed_run_resumes_to_the_uninterrupted_result(case, killed_runs, tmp_path, capsys, omniglot):
    r = killed_runs[case]
    out = r["out"]
    assert "Traceback" not in r["stderr"] + r["stdout"]
    stopped = read_checkpoint(out / "checkpoint.pt")["iteration"]
    logged = [x["iteration"] for x in read_metrics(out / "metrics.jsonl")]
    if r["sig"] == signal.SIGKILL:
        assert r["returncode"] == -signal.SIGKILL
        assert stopped >= 2 and logged[-1] in (stopped, stopped + 1)  # the log line comes just before the save
        # a crash in the middle of a save may leave only its temporary file, never a half-written checkpoint
        assert {p.name for p in out.iterdir()} - set(RUN_FILES) <= {f".checkpoint.pt.{r['process'].pid}.tmp"}
    else:
        assert r["returncode"] == 130, r["stderr"][-2000:]
        message = f"Interrupted at iteration {stopped}; checkpoint saved, continue with --resume."
        assert message in r["stdout"] + r["stderr"]
        assert logged == list(range(1, stopped + 1)), "the interrupted iteration is logged and saved"
        assert_no_leftovers(out)

    end = stopped + 2
    cli.main(cli_args(r["algo"]) + ["--iterations", str(end), "--resume", "--out", str(out)])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"out": str(out), "iterations": end}

    config = replace(TrainConfig.from_dict(json.loads((out / "config.json").read_text())), iterations=end)
    assert config.algo == r["algo"] and config.seed == 7
    run(config, tmp_path / "straight", omniglot)
    got, want = (read_checkpoint(d / "checkpoint.pt") for d in (out, tmp_path / "straight"))
    assert got["iteration"] == want["iteration"] == end
    assert_same_params(got["params"], want["params"])
    assert_same_optimizer(got["optimizer"], want["optimizer"])
    straight_records = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert without_time(read_metrics(out / "metrics.jsonl")) == without_time(straight_records)
    if r["sig"] != signal.SIGKILL:
        assert_no_leftovers(out)


def test_sigterm_saves_and_exits_130(one_iteration, tmp_path, monkeypatch, capsys):
    """SIGTERM (what schedulers and `kill` send) is handled like Ctrl-C: save, message, exit status 130."""
    out = tmp_path / "run"
    shutil.copytree(one_iteration, out)
    original = FOMAML.meta_gradient

    def meta_gradient(self, params, episode):
        signal.raise_signal(signal.SIGTERM)
        return original(self, params, episode)

    monkeypatch.setattr(FOMAML, "meta_gradient", meta_gradient)

    def unhandled(signum, frame):  # instead of the default action, which would end pytest
        raise RuntimeError("SIGTERM reached the previous handler: training does not handle it")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main(cli_args("fomaml") + ["--iterations", "50", "--resume", "--out", str(out)])
        assert signal.getsignal(signal.SIGTERM) is unhandled, "the previous SIGTERM handler must be restored"
    finally:
        signal.signal(signal.SIGTERM, before)
    assert info.value.code == 130
    captured = capsys.readouterr()
    assert "Interrupted at iteration 2; checkpoint saved, continue with --resume." in captured.out + captured.err
    assert read_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert_no_leftovers(out)


# (c) atomic writes and refusals ------------------------------------------------------------------------------------

def test_save_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"a": torch.ones(3)}, path)
    save_atomic({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"a": torch.ones(3)}, path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3)), "the old checkpoint must survive"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("changes, keys", [
    (dict(n_way=3), ["n_way"]),
    (dict(inner_lr=0.3), ["inner_lr"]),
    (dict(n_way=3, inner_lr=0.3, seed=8), ["n_way", "inner_lr", "seed"]),
    (dict(algo="maml"), ["algo"]),
])
def test_checkpoint_of_another_configuration_is_refused(changes, keys, run_copy, omniglot):
    before = {name: (run_copy / name).read_bytes() for name in RUN_FILES}
    with pytest.raises(ValueError, match=r"trained with another configuration \(differs in ") as info:
        run(tiny(iterations=3, **changes), run_copy, omniglot, resume=True)
    differing = str(info.value).split("differs in ")[1].split(")")[0].split(", ")
    assert sorted(differing) == sorted(keys)
    assert {name: (run_copy / name).read_bytes() for name in RUN_FILES} == before, "a refused resume must not write"


def test_schedule_settings_may_change_on_resume(run_copy, omniglot):
    run(tiny(iterations=2, log_every=2, checkpoint_every=5, val_every=2, val_tasks=2), run_copy, omniglot, resume=True)
    assert read_checkpoint(run_copy / "checkpoint.pt")["iteration"] == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_refused(damage, run_copy, omniglot):
    path = run_copy / "checkpoint.pt"
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00not a checkpoint" * 99}
    path.write_bytes(damaged[damage])
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged or not a fastadapt checkpoint"):
        run(tiny(iterations=3), run_copy, omniglot, resume=True)
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


def test_foreign_torch_file_is_refused(run_copy, omniglot):
    torch.save({"state_dict": {"w": torch.ones(2)}}, run_copy / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"is not a fastadapt checkpoint of version 2"):
        run(tiny(iterations=3), run_copy, omniglot, resume=True)


def test_version_1_checkpoint_is_refused_with_the_reason(run_copy):
    """Checkpoints of the seeded split (results/omniglot-cpu) must not be evaluated on today's split."""
    blob = read_checkpoint(run_copy / "checkpoint.pt")
    torch.save({**blob, "version": 1}, run_copy / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt is of version 1, written before the published Vinyals split \(its "
                                         r"test characters overlap today's training characters\).*train it again"):
        load_checkpoint(run_copy / "old.pt")


def test_reptile_refuses_another_iteration_count_on_resume(tmp_path, omniglot):
    """Reptile's step size reaches 0 at the last iteration: resuming with another count would silently change the
    schedule saved in the checkpoint, so it is refused and nothing is written."""
    config = tiny(algo="reptile", iterations=2, inner_lr=0.1, meta_lr=1.0)
    run(config, tmp_path, omniglot)
    before = {name: (tmp_path / name).read_bytes() for name in RUN_FILES}
    with pytest.raises(ValueError, match=r"anneals reptile's outer step size to 0 over iterations=2 .* asks for "
                                         r"iterations=4; resume with iterations=2 \(--iterations 2\)"):
        run(replace(config, iterations=4), tmp_path, omniglot, resume=True)
    assert {name: (tmp_path / name).read_bytes() for name in RUN_FILES} == before
    scheduler = read_checkpoint(tmp_path / "checkpoint.pt")["scheduler"]
    assert scheduler["last_epoch"] == 2 and scheduler["_last_lr"] == [0.0]  # the schedule, saved: 1, 0.5, then 0


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at .*nothing\.pt; train first"):
        load_checkpoint(tmp_path / "nothing.pt")


# (d) NaN ----------------------------------------------------------------------------------------------------------

def diverge_at(monkeypatch, call: int, how: str) -> None:
    """Make FOMAML's meta_gradient return a NaN loss (or an infinite gradient) from its `call`-th call on."""
    original = FOMAML.meta_gradient
    calls = []

    def meta_gradient(self, params, episode):
        grads, metrics = original(self, params, episode)
        calls.append(1)
        if len(calls) >= call:
            if how == "nan loss":
                metrics = {**metrics, "loss": float("nan")}
            else:
                grads = {k: torch.full_like(g, float("inf")) for k, g in grads.items()}
        return grads, metrics

    monkeypatch.setattr(FOMAML, "meta_gradient", meta_gradient)


@pytest.mark.parametrize("how", ["nan loss", "inf gradient"])
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(how, one_iteration, tmp_path, monkeypatch, omniglot):
    diverge_at(monkeypatch, 2, how)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"Training stopped at iteration 2: meta-loss is .*The last good "
                                                r"checkpoint \(.*checkpoint\.pt\) was kept;.* --meta-lr"):
        run(tiny(iterations=5), out, omniglot)
    good = read_checkpoint(one_iteration / "checkpoint.pt")
    kept = read_checkpoint(out / "checkpoint.pt")
    assert kept["iteration"] == 1
    assert_same_params(kept["params"], good["params"])
    assert_same_optimizer(kept["optimizer"], good["optimizer"])
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert_no_leftovers(out)


def test_the_advice_after_nan_works_resume_with_a_lower_meta_lr(run_copy, omniglot):
    run(tiny(iterations=2, meta_lr=5e-4), run_copy, omniglot, resume=True)
    blob = read_checkpoint(run_copy / "checkpoint.pt")
    assert blob["iteration"] == 2
    assert blob["config"]["meta_lr"] == 5e-4
    assert [g["lr"] for g in blob["optimizer"]["param_groups"]] == [5e-4], "the optimizer must use the new rate"


def test_nan_in_the_cli_is_one_error_line(one_iteration, tmp_path, monkeypatch, capsys):
    diverge_at(monkeypatch, 1, "nan loss")
    out = tmp_path / "run"
    shutil.copytree(one_iteration, out)
    with pytest.raises(SystemExit) as info:
        cli.main(cli_args("fomaml") + ["--iterations", "3", "--resume", "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: Training stopped at iteration 2: meta-loss is nan." in err
    assert "Traceback" not in err
    assert read_checkpoint(out / "checkpoint.pt")["iteration"] == 1
