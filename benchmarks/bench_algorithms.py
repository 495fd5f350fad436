"""Meta-iterations per second and peak memory of every algorithm, and vmap versus a per-task loop.

Each measurement runs in a fresh process so that peak memory is its own: peak RSS growth on the
CPU (ru_maxrss after minus before the first step), torch.cuda.max_memory_allocated on a GPU.
Data are random 28x28 images (speed does not depend on pixel values).

    python benchmarks/bench_algorithms.py            # CPU, and CUDA too when present
    python benchmarks/bench_algorithms.py --quick    # fewer timed iterations
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SETTINGS = {  # name: (n_way, k_shot, meta_batch_size, inner_steps, inner_lr)
    "5-way 1-shot": (5, 1, 32, 1, 0.4),
    "20-way 1-shot": (20, 1, 16, 5, 0.1),
}


def measure(algo: str, setting: str, n_query: int, device: str, path: str, iterations: int) -> dict:
    """Time `iterations` meta-steps (after one warm-up step) of one algorithm in this process."""
    from fastadapt.algorithms import ALGORITHMS, make_algorithm
    from fastadapt.core import maml_loss_reference
    from fastadapt.tasks import EpisodeSampler

    n_way, k_shot, meta_batch_size, inner_steps, inner_lr = SETTINGS[setting]
    torch.manual_seed(0)
    images = (torch.rand(200, 20, 1, 28, 28) * 255).to(torch.uint8).to(device)  # (classes, drawers, 1, 28, 28)
    sampler = EpisodeSampler(images)
    name = "maml" if algo == "maml-reference" else algo
    model = ALGORITHMS[name].image_model(n_way).to(device)  # each algorithm's own network
    algorithm = make_algorithm(name, model, inner_lr=inner_lr, inner_steps=inner_steps,
                               vectorize={"vmap": True, "loop": False}.get(path))
    params = {k: v.to(device) for k, v in algorithm.init_params().items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)

    def step(i):
        episode = sampler.sample(meta_batch_size, n_way, k_shot, n_query, seed=i)
        if algo == "maml-reference":
            loss = maml_loss_reference(model, params, *episode, inner_steps=inner_steps, inner_lr=inner_lr)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        else:
            grads, _ = algorithm.meta_gradient(params, episode)
        for k, p in params.items():
            p.grad = grads[k]
        optimizer.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(0)
    sync()
    start = time.perf_counter()
    for i in range(1, iterations + 1):
        step(i)
    sync()
    seconds = (time.perf_counter() - start) / iterations
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024)
    return {"algo": algo, "path": path, "setting": setting, "n_query": n_query, "device": device,
            "it_per_s": 1 / seconds, "peak_mb": peak / 2**20}


def run_child(args: list[str]) -> dict:
    """Run one measurement in a fresh Python process and parse its JSON line."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the table of all measurements."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 timed iterations instead of 5")
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: both when CUDA exists)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a busy 2-core machine, 2 threads fight and run up to 10x slower)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        algo, setting, n_query, device, path = args.child
        iterations = 2 if path.endswith("!quick") else 5
        print(json.dumps(measure(algo, setting, int(n_query), device, path.removesuffix("!quick"), iterations)))
        return
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    suffix = "!quick" if args.quick else ""
    runs = []
    for device in devices:
        for setting in SETTINGS:
            for algo in ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet"):
                runs.append((algo, setting, "1", device, "auto"))
            for n_query in ("1", "5", "15"):  # vmap versus loop for MAML as the query set grows
                for path in ("vmap", "loop", "reference"):
                    runs.append(("maml-reference" if path == "reference" else "maml", setting, n_query, device, path))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(f"{'device':6} {'setting':14} {'algorithm':15} {'path':9} {'query':>5} {'it/s':>8} {'peak MB':>8}")
    for algo, setting, n_query, device, path in runs:
        r = run_child(["--threads", str(args.threads), "--child", algo, setting, n_query, device, path + suffix])
        print(f"{device:6} {setting:14} {algo:15} {path:9} {n_query:>5} {r['it_per_s']:8.2f} {r['peak_mb']:8.0f}",
              flush=True)


if __name__ == "__main__":
    main()
