"""The resumable table runner: train every unfinished cell of the Omniglot table at its paper's protocol, within a
budget of wall-clock time, and write one result file per cell.

    python scripts/reproduce.py --all --budget-minutes 300 --processes 2
    python scripts/reproduce.py --cells maml-5w1s,protonet-5w1s,protonet-20w1s --budget-minutes 60
    python scripts/reproduce.py --show protonet-5w1s      # the cell's protocol (fastadapt.protocols) and run

Every setting comes from the one hyperparameter table, fastadapt.protocols. A training run (a "job") is its own
process with one CPU thread (OMP_NUM_THREADS=1); on a GPU the processes share it, through CUDA MPS when
nvidia-cuda-mps-control is available. Each job resumes from results/omniglot/runs/<job>/checkpoint.pt, is told to
stop (SIGTERM: the trainer saves) when the time left is what evaluation needs (--eval-minutes), then evaluates its
cells at the protocol's test setting and writes results/omniglot/<cell>.json: accuracy, ci95, tasks, transductive,
protocol, paper, iterations done of the total, complete, device, cumulative wall time, commit, command, and `run`,
the run folder (checkpoint.pt, metrics.jsonl, config.json) relative to results/. A later call continues every
cell that is not complete. Jobs run in the table's order of priority: MAML 5-way 1-shot, the two ProtoNet models
(1-shot and 5-shot training, tested 5-way and 20-way: four cells), MAML 20-way 1-shot, then the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELLS = ((5, 1), (5, 5), (20, 1), (20, 5))


@dataclass(frozen=True)
class Cell:
    """One result file: a model (its job) tested n_way-way k_shot-shot under a protocol ("table" or "lake")."""

    name: str  # results/omniglot/<name>.json
    algo: str
    n_way: int
    k_shot: int
    protocol: str = "table"


@dataclass(frozen=True)
class Job:
    """One training run, in results/omniglot/runs/<name>, and the cells its model is tested on."""

    name: str
    algo: str
    n_way: int  # the table cell whose protocol trains the model
    k_shot: int
    split: str
    cells: tuple[Cell, ...]


def make_jobs() -> list[Job]:
    """Every job of the table, in priority order."""
    jobs = {}
    for algo in ("maml", "fomaml", "anil", "metasgd", "reptile"):
        for n, k in CELLS:
            jobs[f"{algo}-{n}w{k}s"] = Job(f"{algo}-{n}w{k}s", algo, n, k, "vinyals", (Cell(f"{algo}-{n}w{k}s", algo, n, k),))
    for k in (1, 5):  # one 60-way model per shot setting, tested 5-way and 20-way (the paper's four cells)
        jobs[f"protonet-{k}shot"] = Job(f"protonet-{k}shot", "protonet", 5, k, "vinyals",
                                        tuple(Cell(f"protonet-{n}w{k}s", "protonet", n, k) for n in (5, 20)))
    for algo in ("maml", "protonet"):  # trained on the background alphabets, tested with Lake et al.'s protocol
        jobs[f"{algo}-lake-20w1s"] = Job(f"{algo}-lake-20w1s", algo, 20, 1, "lake",
                                         (Cell(f"{algo}-lake-20w1s", algo, 20, 1, "lake"),))
    first = ["maml-5w1s", "protonet-1shot", "protonet-5shot", "maml-20w1s"]
    return [jobs[name] for name in first] + [job for name, job in jobs.items() if name not in first]


JOBS = make_jobs()


def select_jobs(cells: str | None) -> list[Job]:
    """The jobs behind a comma-separated list of cell (or job) names, in priority order; None: all of them."""
    if cells is None:
        return JOBS
    wanted = {name.strip() for name in cells.split(",") if name.strip()}
    known = {c.name for job in JOBS for c in job.cells} | {job.name for job in JOBS}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f"error: unknown cells {', '.join(unknown)}; the table has {', '.join(sorted(known))}")
    return [job for job in JOBS if job.name in wanted or any(c.name in wanted for c in job.cells)]


def parse_settings(pairs: list[str]) -> dict:
    """--set name=value pairs (TrainConfig fields) as a dict of ints, floats or strings."""
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        settings[name] = {"True": True, "False": False}.get(value, value) if isinstance(value, str) else value
    return settings


def job_config(job: Job, settings: dict):
    """The job's TrainConfig: its cell's published protocol (fastadapt.protocol_config), then the --set changes."""
    from fastadapt import protocol_config

    config = protocol_config("omniglot", job.algo, job.n_way, job.k_shot, split=job.split, checkpoint_every=100,
                             log_every=50)
    return replace(config, **settings)




def progress_of(config, blob: dict | None) -> tuple[int, int, bool]:
    """(iterations done, iterations total, complete) of a run from its checkpoint. With early stopping the total
    is the least the protocol still needs: model selection until `patience` more validation points pass without
    a lower loss, then the retraining on trainval for (best point - 1 + patience) points."""
    done = 0 if blob is None else blob["iteration"]
    selection = {} if blob is None else blob.get("selection", {})
    if not config.patience:
        return done, config.iterations, done >= config.iterations
    if selection.get("finished"):
        return done, done, True
    if selection.get("phase", 1) == 2:
        return done, selection["phase_end"], False
    points_left = config.patience + 1 - selection.get("wait", 0)  # train.py stops once its wait exceeds the patience
    phase1 = min((done // config.val_every + points_left) * config.val_every, config.iterations)
    best = max(selection.get("best_point", 0), 1)
    phase2 = (best - 1 + config.patience) * config.val_every if config.retrain else 0
    return done, phase1 + phase2, False


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ------------------------------------------------------------------ one job, in its own process


def evaluate_cell(cell: Cell, config, algorithm, params, data, device, tasks: int | None, seed: int) -> dict:
    """The cell's test: the protocol's tasks, queries and inner steps; Reptile both transductive and not."""
    from fastadapt import evaluate, protocol, task_source
    from fastadapt.evaluate import lake_one_shot_tasks

    row = protocol("omniglot", cell.algo, cell.n_way, cell.k_shot)
    if cell.protocol == "lake":
        sample = lake_one_shot_tasks(data, n_way=cell.n_way, device=device)
        count, modes = tasks or 1_000, [False]
    else:
        sample = task_source(config, "test", device, n_way=cell.n_way, k_shot=cell.k_shot,
                             n_query=row.test_queries, data=data)
        count = tasks or row.test_tasks
        modes = [row.transductive] + [not row.transductive for _ in range(len(row.papers) > 1)]
    results = {}
    for transductive in modes:
        result = evaluate(algorithm, params, sample, tasks=count, seed=seed, inner_steps=config.eval_inner_steps,
                          transductive=transductive, progress=False)
        paper = next((p for p in row.papers if p.transductive == transductive), None) if cell.protocol == "table" \
            else None
        results["transductive" if transductive else "non_transductive"] = {
            "accuracy": result["accuracy"], "ci95": result["ci95"], "tasks": result["tasks"],
            "paper": None if paper is None else {"accuracy": paper.accuracy, "ci95": paper.ci95,
                                                 "source": paper.source}}
    return results


def write_cell(cell: Cell, job: Job, config, results: dict, blob: dict, results_dir: Path, device, eval_s: float,
               command: str, settings: dict) -> dict:
    """Write results/omniglot/<cell>.json."""
    from fastadapt import protocol
    from fastadapt.results import source_commit

    row = protocol("omniglot", cell.algo, cell.n_way, cell.k_shot)
    headline = results["transductive" if cell.protocol == "table" and row.transductive else "non_transductive"]
    done, total, complete = progress_of(config, blob)
    protocol_dict = {k: v for k, v in asdict(row).items() if k != "papers"}
    protocol_dict.update(train_n_way=config.n_way, train_k_shot=config.k_shot, split=config.split,
                         test_n_way=cell.n_way, test_k_shot=cell.k_shot,
                         test_protocol="Lake et al. 2015: one alphabet, two drawers" if cell.protocol == "lake"
                         else "table")
    out = {
        "algorithm": cell.algo, "n_way": cell.n_way, "k_shot": cell.k_shot, "split": config.split,
        "accuracy": headline["accuracy"], "ci95": headline["ci95"], "tasks": headline["tasks"],
        "transductive": cell.protocol == "table" and row.transductive, "protocol": protocol_dict,
        "paper": headline["paper"],  # None for the Lake protocol: no paper ran these networks this way
        "iterations_done": done, "iterations_total": total, "complete": complete,
        "device": device_name(device), "wall_time_s": round(blob.get("time_s", 0.0) + eval_s, 1),
        "train_time_s": round(blob.get("time_s", 0.0), 1), "eval_time_s": round(eval_s, 1),
        "commit": source_commit(ROOT, ("src",)), "command": command, "run": f"omniglot/runs/{job.name}",
    }
    if len(results) > 1:
        out.update(results)
    if settings:
        out["changed"] = settings  # --set changes to the protocol's training settings (not the published run)
    if config.patience:
        selection = blob.get("selection", {})
        out["selection"] = {"phase": selection.get("phase", 1), "best_val_loss": selection.get("best_loss"),
                            "best_iteration": selection.get("best_point", 0) * config.val_every,
                            "note": "iterations_total is the least early stopping still needs"}
    path = results_dir / "omniglot" / f"{cell.name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    return out


def work(args) -> None:
    """Train one job until it is done or the deadline comes, then evaluate its cells and write their files."""
    import torch

    torch.set_num_threads(1)
    from fastadapt import load_checkpoint, load_omniglot, pick_device, train

    job = next(job for job in JOBS if job.name == args.worker)
    early = threading.Event()  # a SIGTERM before training starts: evaluate what the checkpoint holds
    signal.signal(signal.SIGTERM, lambda *_: early.set())
    settings = parse_settings(args.set)
    config = job_config(job, settings)
    results_dir = Path(args.results)
    run_dir = results_dir / "omniglot" / "runs" / job.name
    device = pick_device(args.device)
    data = load_omniglot(root=args.data) if args.data else load_omniglot()
    stop = threading.Timer(max(0.0, args.deadline - time.time()), os.kill, (os.getpid(), signal.SIGTERM))
    stop.daemon = True
    stop.start()
    status = "finished"
    try:
        if early.is_set() or time.time() >= args.deadline:
            raise KeyboardInterrupt
        compile_step = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
        try:
            train(config, run_dir, resume=True, device=device, progress=False, data=data, compile_step=compile_step)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a step torch.compile cannot build here: continue eagerly from the checkpoint
            if not compile_step:
                raise
            print(f"[{job.name}] compiled step failed ({type(err).__name__}: {err}); continuing eagerly", flush=True)
            train(config, run_dir, resume=True, device=device, progress=False, data=data)
    except KeyboardInterrupt:
        status = "stopped"
    finally:
        stop.cancel()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not (run_dir / "checkpoint.pt").exists():
        print(f"[{job.name}] stopped before its first checkpoint; nothing to evaluate", flush=True)
        return
    blob = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    print(f"[{job.name}] training {status} at iteration {blob['iteration']}", flush=True)
    started = time.perf_counter()
    config, algorithm, params = load_checkpoint(run_dir / "checkpoint.pt", device)
    for cell in job.cells:
        results = evaluate_cell(cell, config, algorithm, params, data, device, args.test_tasks, args.seed)
        out = write_cell(cell, job, config, results, blob, results_dir, device, time.perf_counter() - started,
                         args.command, settings)
        print(f"[{job.name}] {cell.name}: {out['accuracy']:.4f} +- {out['ci95']:.4f} on {out['tasks']} tasks, "
              f"{out['iterations_done']} of {out['iterations_total']} iterations", flush=True)


# ------------------------------------------------------------------ the runner


def is_done(job: Job, results_dir: Path) -> bool:
    """True when every cell of the job has a result file from a complete run."""
    for cell in job.cells:
        path = results_dir / "omniglot" / f"{cell.name}.json"
        if not path.exists() or not json.loads(path.read_text()).get("complete"):
            return False
    return True


def start_mps() -> dict | None:
    """Start a CUDA MPS daemon for this runner's processes (environment for the children), or None."""
    if shutil.which("nvidia-cuda-mps-control") is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="fastadapt-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    result = subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **env})
    return env if result.returncode == 0 else None


def stop_mps(env: dict) -> None:
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env={**os.environ, **env})


def run_all(args) -> int:
    """Start the unfinished jobs, at most --processes at a time, and stop them all before the budget ends."""
    import torch

    results_dir = Path(args.results)
    (results_dir / "omniglot" / "runs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = started + 60 * args.budget_minutes
    eval_minutes = args.eval_minutes if args.eval_minutes is not None else max(1.0, 0.15 * args.budget_minutes)
    train_deadline = deadline - 60 * eval_minutes
    margin = min(30.0, 6 * args.budget_minutes)  # seconds: no job starts closer than this to the training deadline
    pending = [job for job in select_jobs(args.cells) if not is_done(job, results_dir)]
    cuda = args.device != "cpu" and torch.cuda.is_available()
    processes = args.processes or (4 if cuda else max(1, os.cpu_count() or 1))
    mps = start_mps() if cuda and processes > 1 else None
    command = shlex.join(["python", *sys.argv])
    print(f"runner: {len(pending)} jobs to run ({', '.join(j.name for j in pending) or 'none'}), {processes} at a "
          f"time on {'cuda' if cuda else 'cpu'}{' with MPS' if mps else ''}; training stops "
          f"{eval_minutes:.1f} min before the budget of {args.budget_minutes} min ends", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(mps or {})}
    running: dict[str, subprocess.Popen] = {}
    try:
        while pending or running:
            for name, process in list(running.items()):
                if process.poll() is not None:
                    print(f"runner: {name} exited ({process.returncode}) after {time.time() - started:.0f} s",
                          flush=True)
                    del running[name]
            while pending and len(running) < processes and time.time() < train_deadline - margin:
                job = pending.pop(0)
                worker = [sys.executable, __file__, "--worker", job.name, "--results", str(results_dir),
                          "--deadline", str(train_deadline), "--device", args.device, "--seed", str(args.seed),
                          "--command", command, "--compile", args.compile,
                          *(["--data", args.data] if args.data else []),
                          *(["--test-tasks", str(args.test_tasks)] if args.test_tasks else []),
                          *[f"--set={pair}" for pair in args.set]]
                running[job.name] = subprocess.Popen(worker, env=env)
                print(f"runner: started {job.name} (pid {running[job.name].pid})", flush=True)
            if not running and (not pending or time.time() >= train_deadline - margin):
                break
            if time.time() >= deadline:
                for name, process in running.items():
                    print(f"runner: budget over, ending {name}", flush=True)
                    process.terminate()
                break
            time.sleep(0.2)
        for process in running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    finally:
        if mps:
            stop_mps(mps)
    left = [job.name for job in select_jobs(args.cells) if not is_done(job, results_dir)]
    print(f"runner: done after {time.time() - started:.0f} s; not complete: {', '.join(left) or 'none'}", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every cell of the table (the default without --cells)")
    parser.add_argument("--cells", help="comma-separated cells, e.g. maml-5w1s,protonet-5w1s,protonet-lake-20w1s")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock time for the whole call")
    parser.add_argument("--eval-minutes", type=float, help="time kept for evaluation (default 15%% of the budget)")
    parser.add_argument("--processes", type=int, help="jobs at a time (default: CPU cores, or 4 on a GPU)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="the results folder (default: results/)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", help="Omniglot folder (default: $FASTADAPT_DATA, else download)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test tasks")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the meta-step of MAML-family cells (auto: on a GPU)")
    parser.add_argument("--test-tasks", type=int, help="test tasks per cell (default: the protocol's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a training setting of every job (a quick try: --set iterations=20)")
    parser.add_argument("--show", metavar="CELL", help="print the cell's job, training config and protocol, and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args)
        return
    if args.show:
        from fastadapt import protocol

        job = select_jobs(args.show)[0]
        cell = next((c for c in job.cells if c.name == args.show), job.cells[0])
        row = protocol("omniglot", cell.algo, cell.n_way, cell.k_shot)
        print(json.dumps({"job": job.name, "cells": [c.name for c in job.cells],
                          "config": asdict(job_config(job, parse_settings(args.set))),
                          "protocol": asdict(row)}, indent=2, default=str))
        return
    sys.exit(run_all(args))


if __name__ == "__main__":
    main()
