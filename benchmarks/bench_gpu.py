"""Meta-iterations per second of the training step, eager and compiled, vmap and loop, at the table's 5-way 1-shot
and 20-way 1-shot settings (the protocols' meta-batches and inner loops). Runs on a GPU, and on a CPU too.

    python benchmarks/bench_gpu.py                          # every algorithm, eager vmap and loop
    python benchmarks/bench_gpu.py --compile --algos maml   # plus torch.compile of the whole meta-gradient
                                                            # (inductor; on a GPU also mode="reduce-overhead",
                                                            # which captures the step in CUDA graphs)
    python benchmarks/bench_gpu.py --json benchmarks/results/gpu.json

Each row times `--iterations` full meta-steps (episode sampling with the device's generator, meta-gradient,
outer optimizer step, the trainer's one finiteness check) after `--warmup` untimed ones, with the device
synchronised before and after. Episodes are random 28x28 images (the speed does not depend on pixel values).
On a CPU, compiling takes minutes (measured on a busy 2-core machine: about 14 minutes for a small MAML), so
--compile is off by default; a compiled row reports its compile time separately from its speed.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

CELLS = {"5w1s": (5, 1), "20w1s": (20, 1)}
ALGOS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet")


def step_function(algo: str, n_way: int, k_shot: int, device: torch.device, path: str, compile_options: dict | None):
    """(step(i), config) for one setting: a full meta-step on the i-th episode."""
    from fastadapt import EpisodeSampler, meta_step, protocol_config
    from fastadapt.checkpoints import fresh_run
    from fastadapt.training import compiled_meta_gradient

    config = protocol_config("omniglot", algo, n_way, k_shot)
    run = fresh_run(config, device, config.iterations)
    run.algorithm.vectorize = path == "vmap"
    images = (torch.rand(200, 20, 1, 28, 28) * 255).to(torch.uint8).to(device)  # (classes, drawers, 1, 28, 28)
    sampler = EpisodeSampler(images, device_generator=device.type == "cuda")
    gradient = compiled_meta_gradient(run.algorithm, **compile_options) if compile_options is not None else None

    def step(i: int) -> None:
        episode = sampler.sample(config.meta_batch_size, config.n_way, config.k_shot, config.n_query, seed=i)
        meta_step(run.algorithm, run.params, run.optimizer, episode, gradient)

    return step, config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(algo, cell, device, path, compile_options, iterations, warmup) -> dict:
    n_way, k_shot = CELLS[cell]
    step, config = step_function(algo, n_way, k_shot, device, path, compile_options)
    sync(device)
    started = time.perf_counter()
    step(0)  # the first call compiles, when compiling
    sync(device)
    first = time.perf_counter() - started
    for i in range(1, warmup):
        step(i)
    sync(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + iterations):
        step(i)
    sync(device)
    seconds = (time.perf_counter() - started) / iterations
    mode = "eager" if compile_options is None else "compiled" + (f" ({compile_options['mode']})"
                                                                  if compile_options.get("mode") else "")
    return {"algorithm": algo, "cell": cell, "path": path, "step": mode, "meta_batch_size": config.meta_batch_size,
            "iterations_per_s": round(1 / seconds, 3), "first_step_s": round(first, 2), "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--iterations", type=int, help="timed meta-steps (default: 20 on a GPU, 3 on a CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first (the first one compiles)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (MAML-family algorithms)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the table runner)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    from fastadapt import ALGORITHMS, MetaLearner, pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    iterations = args.iterations or (20 if device.type == "cuda" else 3)
    rows = []
    for cell in args.cells.split(","):
        for algo in args.algos.split(","):
            functional = ALGORITHMS[algo].meta_gradient is MetaLearner.meta_gradient
            paths = ("vmap", "loop") if algo not in ("protonet",) else ("loop",)
            variants = [(path, None) for path in paths]
            if args.compile and functional:
                variants.append(("vmap", {}))
                if device.type == "cuda":
                    variants.append(("vmap", {"mode": "reduce-overhead"}))  # CUDA graphs
            for path, options in variants:
                try:
                    row = measure(algo, cell, device, path, options, iterations, args.warmup)
                except Exception as err:  # report and go on: one failing variant must not hide the others
                    row = {"algorithm": algo, "cell": cell, "path": path, "error": f"{type(err).__name__}: {err}"[:300]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": args.threads}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
