"""Data pipeline speed: first-time Omniglot preprocessing, cached loading, and episode sampling.

Run from the repository root:  python benchmarks/bench_data.py  [--skip-preprocess] [--seconds 2]
The Omniglot archives come from --root, else $FASTADAPT_DATA, else the download cache.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fastadapt.data import load_omniglot, omniglot_classes, timed_load
from fastadapt.tasks import EpisodeSampler


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder with the Omniglot zips (default: $FASTADAPT_DATA)")
    parser.add_argument("--skip-preprocess", action="store_true", help="skip the slow first-time preprocessing")
    parser.add_argument("--loads", type=int, default=5, help="cached loads to take the median of")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per sampled batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent sampling per setting and device")
    parser.add_argument("--query-1shot", type=int, default=1, help="query examples per class, 5-way 1-shot")
    parser.add_argument("--query-5shot", type=int, default=5, help="query examples per class, 20-way 5-shot")
    parser.add_argument("--devices", nargs="*", default=None, help="devices to sample on (default: cpu and cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preprocess(root: str | None) -> tuple[float, Path, tempfile.TemporaryDirectory]:
    """Seconds to find, preprocess and cache full Omniglot into a fresh temporary cache folder."""
    folder = tempfile.TemporaryDirectory(prefix="fastadapt-bench-")
    cache = Path(folder.name) / "omniglot28.pt"
    _, seconds = timed_load(root=root, cache=cache, download=False)
    return seconds, cache, folder


def bench_cached_load(root, cache: Path | None, loads: int) -> float:
    """Median seconds of several loads of an existing cache file (the default cache when None) built from root."""
    times = [timed_load(root=root, cache=cache, download=False)[1] for _ in range(loads)]
    return statistics.median(times)


def bench_sampling(sampler: EpisodeSampler, device: torch.device, meta_batch: int, n_way: int, k_shot: int,
                   n_query: int, seconds: float) -> float:
    """Batches of meta_batch tasks sampled per second, measured for about `seconds` after a warm-up."""
    sampler.sample(meta_batch, n_way, k_shot, n_query, seed=0)  # warm-up (allocations, CUDA kernels)
    sync(device)
    generator = torch.Generator().manual_seed(1)
    batches, start = 0, time.perf_counter()
    while True:
        sampler.sample(meta_batch, n_way, k_shot, n_query, seed=generator)
        batches += 1
        if batches % 5 == 0:
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return batches / elapsed


def main() -> None:
    """Run the benchmarks and print one table."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []  # (what, device, value)

    cache, folder = None, None
    if not args.skip_preprocess:
        seconds, cache, folder = bench_preprocess(args.root)
        rows.append(("first-time preprocessing, full Omniglot (1623x20 PNGs -> 28x28, cached)", "cpu", f"{seconds:.1f} s"))
    median = bench_cached_load(args.root, cache, args.loads)
    rows.append((f"cached load (median of {args.loads})", "cpu", f"{median * 1000:.0f} ms"))

    data = load_omniglot(root=args.root, cache=cache, download=False)
    settings = [(5, 1, args.query_1shot), (20, 5, args.query_5shot)]
    for name in devices:
        device = torch.device(name)
        classes = omniglot_classes("vinyals", "train", data=data, device=device)  # (4112, 20, 1, 28, 28) uint8
        sampler = EpisodeSampler(classes)
        for n_way, k_shot, n_query in settings:
            per_second = bench_sampling(sampler, device, args.meta_batch, n_way, k_shot, n_query, args.seconds)
            rows.append((
                f"{n_way}-way {k_shot}-shot, {n_query} query/class, meta-batch {args.meta_batch}, vinyals train",
                name,
                f"{per_second:.1f} batches/s = {per_second * args.meta_batch:.0f} tasks/s",
            ))
    if folder is not None:
        folder.cleanup()

    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    print(f"fastadapt data benchmark  (torch {torch.__version__}, {cpu}{gpu})")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'device':<6}  result")
    print(f"{'-' * width}  {'-' * 6}  {'-' * 30}")
    for what, device, value in rows:
        print(f"{what:<{width}}  {device:<6}  {value}")


if __name__ == "__main__":
    main()
