"""Reproduce one cell of the Omniglot table with a paper's protocol: train, evaluate, write the result.

    python scripts/reproduce.py maml 5 1                 # MAML 5-way 1-shot, 60k iterations
    python scripts/reproduce.py protonet 20 5 --split lake
    python scripts/reproduce.py maml 5 1 --iterations 200 --tasks 100 --out /tmp/try   # a quick try

Writes OUT/<algo>-<N>w<K>s[-lake].json (accuracy, ci95, tasks, seed, iterations, device, wall time,
commit, exact command), OUT/<algo>-<N>w<K>s[-lake]/metrics.jsonl (the training curve) and
checkpoint.pt (about 0.5 MB). Interrupted runs continue where they stopped when run again.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastadapt.evaluate import evaluate
from fastadapt.train import TrainConfig, load_checkpoint, pick_device, task_source, train

# Published protocols: (n_way -> settings). Query counts follow each paper's code.
PROTOCOLS = {
    # Finn et al. 2017: 5-way lr 0.4, 1 step, meta-batch 32; 20-way lr 0.1, 5 steps, meta-batch 16;
    # Adam 1e-3; 60k iterations; 3 (5-way) or 5 (20-way) test steps.
    "maml": lambda n, k: dict(inner_lr=0.4 if n == 5 else 0.1, inner_steps=1 if n == 5 else 5,
                              meta_batch_size=32 if n == 5 else 16, meta_lr=1e-3, iterations=60_000,
                              n_query=k, eval_inner_steps=3 if n == 5 else 5),
    # Reptile (Nichol et al. 2018) adapts with Adam in its own code; here plain SGD, same outer rule.
    "reptile": lambda n, k: dict(inner_lr=0.1, inner_steps=5, meta_batch_size=5, meta_lr=1.0,
                                 iterations=100_000 if n == 5 else 200_000, n_query=k, eval_inner_steps=50),
    # Snell et al. 2017: train with 60 ways, 5 queries per class, Adam 1e-3; 1,000 test episodes.
    "protonet": lambda n, k: dict(meta_batch_size=1, meta_lr=1e-3, iterations=20_000, n_query=5, inner_steps=0),
}
PROTOCOLS["fomaml"] = PROTOCOLS["maml"]
PROTOCOLS["anil"] = PROTOCOLS["maml"]
PROTOCOLS["metasgd"] = PROTOCOLS["maml"]
TRAIN_WAYS = {"protonet": 60}


def git_commit() -> str:
    """The current commit of this repository, or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    """Train and evaluate one cell, then write its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", choices=sorted(PROTOCOLS))
    parser.add_argument("n_way", type=int)
    parser.add_argument("k_shot", type=int)
    parser.add_argument("--split", choices=("vinyals", "lake"), default="vinyals")
    parser.add_argument("--iterations", type=int, help="override the paper's iteration count")
    parser.add_argument("--meta-batch-size", type=int, help="override the paper's meta-batch size")
    parser.add_argument("--tasks", type=int, default=1000, help="test tasks (the papers use 600 to 1,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/omniglot")
    args = parser.parse_args()

    settings = PROTOCOLS[args.algo](args.n_way, args.k_shot)
    if args.iterations:
        settings["iterations"] = args.iterations
    if args.meta_batch_size:
        settings["meta_batch_size"] = args.meta_batch_size
    name = f"{args.algo}-{args.n_way}w{args.k_shot}s" + ("-lake" if args.split == "lake" else "")
    run_dir = Path(args.out) / name
    config = TrainConfig(algo=args.algo, split=args.split, n_way=TRAIN_WAYS.get(args.algo, args.n_way),
                         k_shot=args.k_shot, seed=args.seed, val_every=1000, val_tasks=100,
                         checkpoint_every=500, log_every=50, first_order=args.algo == "fomaml", **settings)
    device = pick_device(args.device)
    started = time.perf_counter()
    train(config, run_dir, resume=(run_dir / "checkpoint.pt").exists(), device=device)
    wall_time = time.perf_counter() - started
    _, algorithm, params = load_checkpoint(run_dir / "checkpoint.pt", device)
    sample = task_source(config, "test", device, n_way=args.n_way, n_query=settings["n_query"])
    result = evaluate(algorithm, params, sample, tasks=args.tasks, seed=args.seed,
                      inner_steps=config.eval_inner_steps)
    result.update(algorithm=args.algo, split=args.split, seed=args.seed, iterations=config.iterations,
                  meta_batch_size=config.meta_batch_size, train_n_way=config.n_way,
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  wall_time_s=round(wall_time, 1), commit=git_commit(),
                  command=shlex.join([Path(sys.executable).name, *sys.argv]),
                  curve=str(run_dir / "metrics.jsonl"))
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
