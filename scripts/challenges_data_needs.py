"""How much meta-training data does a meta-learner need? (book chapter 13_challenges)

Meta-trains Prototypical Networks on nested subsets of the Omniglot meta-training classes (the
published Vinyals split, each character with its four rotations), the same budget for every subset,
and measures 5-way 1-shot accuracy on new tasks from the subset's own classes ("meta-training
accuracy") and on tasks from the meta-test characters ("meta-test accuracy"), with 95% intervals.
Along the way it records both accuracies at a few points of training, on fewer tasks, the
meta-test side measured on the validation characters so that the curves never touch the test set.

    python scripts/challenges_data_needs.py                         # the book's run (writes results/challenges/)
    python scripts/challenges_data_needs.py --quick --out /tmp/dn   # a tiny run to try the script

Writes OUT/data_needs.json (one row per subset, plus the settings, device, wall time, commit and the
exact command) and OUT/data_needs_curves.json (the training log of every subset). A run that stops
is continued when started again with the same settings: finished subsets are kept, not redone.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import fastadapt
from fastadapt.results import source_commit

ROOT = Path(__file__).resolve().parents[1]




def nested_class_subsets(names: list[str], sizes: list[int], seed: int) -> dict[int, torch.Tensor]:
    """Class indices of nested subsets: whole characters (all their rotations) in one seeded random order.

    names are the class names of omniglot_class_names ("Alphabet/characterNN/rotDDD"); a size of 0 means
    every class. A subset of s classes holds the first s / rotations characters of the order.
    """
    characters = list(dict.fromkeys(name.rsplit("/", 1)[0] for name in names))
    classes_of = {c: [i for i, name in enumerate(names) if name.rsplit("/", 1)[0] == c] for c in characters}
    rotations = len(names) // len(characters)
    order = torch.randperm(len(characters), generator=torch.Generator().manual_seed(seed)).tolist()
    subsets = {}
    for size in sizes:
        chosen = order if size == 0 else order[: size // rotations]
        if size and (size % rotations or size // rotations > len(characters)):
            raise ValueError(f"size {size} is not a multiple of {rotations} up to {len(names)} classes.")
        subsets[len(chosen) * rotations] = torch.tensor(sorted(i for c in chosen for i in classes_of[characters[c]]))
    return subsets


def run_subset(images, val_images, test_images, args, device) -> dict:
    """Meta-train a ProtoNet on one set of classes, then measure it; returns the subset's row and curve."""
    torch.manual_seed(args.seed)
    algorithm = fastadapt.ProtoNet(fastadapt.Conv4(n_way=None).to(device))  # MAML's strided Conv4, no head
    params = algorithm.init_params()
    optimizer = torch.optim.Adam(params.values(), lr=args.meta_lr)
    samplers = {part: fastadapt.EpisodeSampler(x) for part, x in
                (("train", images), ("val", val_images), ("test", test_images))}

    def source(part, n_query):
        return lambda tasks, seed: samplers[part].sample(tasks, 5, 1, n_query, seed=seed)

    def measure(part, tasks, seed):
        return fastadapt.evaluate(algorithm, params, source(part, args.test_queries), tasks=tasks, seed=seed,
                                  progress=False)

    log, curve, started = [], [], time.perf_counter()
    for t in range(args.iterations):
        episode = samplers["train"].sample(args.meta_batch_size, 5, 1, args.n_query,
                                           seed=fastadapt.episode_seed(args.seed, t))
        metrics = fastadapt.meta_step(algorithm, params, optimizer, episode)
        done = t + 1
        if done % args.log_every == 0:
            log.append({"iteration": done, **{k: round(float(v), 5) for k, v in metrics.items()}})
        if done % args.curve_every == 0 or done == args.iterations:
            train_now, val_now = measure("train", args.curve_tasks, args.seed + 1), measure("val", args.curve_tasks,
                                                                                           args.seed + 2)
            curve.append({"iteration": done, "train_accuracy": train_now["accuracy"], "train_ci95": train_now["ci95"],
                          "val_accuracy": val_now["accuracy"], "val_ci95": val_now["ci95"],
                          "time_s": round(time.perf_counter() - started, 1)})
            print(f"  {done:5d} iterations: meta-training classes {train_now['accuracy']:.3f}, "
                  f"validation classes {val_now['accuracy']:.3f}", flush=True)
    train_final = measure("train", args.test_tasks, args.seed + 3)
    test_final = measure("test", args.test_tasks, args.seed + 4)
    return {"train_accuracy": train_final["accuracy"], "train_ci95": train_final["ci95"],
            "test_accuracy": test_final["accuracy"], "test_ci95": test_final["ci95"],
            "wall_time_s": round(time.perf_counter() - started, 1), "curve": curve, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 80, 320, 1280, 0],
                        help="meta-training classes per subset, multiples of 4; 0 means all of them")
    parser.add_argument("--iterations", type=int, default=1000, help="meta-iterations per subset")
    parser.add_argument("--meta-batch-size", type=int, default=2, help="5-way 1-shot tasks per meta-iteration")
    parser.add_argument("--n-query", type=int, default=5, help="query examples per class in training tasks")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--test-tasks", type=int, default=400, help="tasks behind each final accuracy")
    parser.add_argument("--test-queries", type=int, default=10, help="query examples per class in measured tasks")
    parser.add_argument("--curve-every", type=int, default=250, help="iterations between two curve points")
    parser.add_argument("--curve-tasks", type=int, default=50, help="tasks behind each curve point")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "results" / "challenges"))
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.iterations, args.test_tasks, args.curve_every, args.curve_tasks = [20, 0], 20, 20, 10, 10

    torch.set_num_threads(args.threads)
    device = fastadapt.pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path, curves_path = out / "data_needs.json", out / "data_needs_curves.json"
    settings = {k: getattr(args, k) for k in ("iterations", "meta_batch_size", "n_query", "meta_lr", "test_tasks",
                                              "test_queries", "curve_every", "curve_tasks", "seed")}
    data = fastadapt.load_omniglot()
    images = fastadapt.omniglot_classes("vinyals", "train", data=data, device=device)
    val_images = fastadapt.omniglot_classes("vinyals", "val", data=data, device=device)
    test_images = fastadapt.omniglot_classes("vinyals", "test", data=data, device=device)
    subsets = nested_class_subsets(fastadapt.omniglot_class_names("vinyals", "train", data=data), args.sizes,
                                   args.seed)

    previous = json.loads(result_path.read_text()) if result_path.exists() else None
    rows, curves, spent = [], {}, 0.0
    if previous and previous.get("settings") == settings and curves_path.exists():
        rows, curves = previous["subsets"], json.loads(curves_path.read_text())
        spent = previous["wall_time_s"]
        print(f"continuing {result_path}: {len(rows)} subsets done")
    started = time.perf_counter()
    for n_classes, index in subsets.items():
        if any(row["classes"] == n_classes for row in rows):
            continue
        print(f"{n_classes} meta-training classes ({len(index) // 4} characters)", flush=True)
        measured = run_subset(images[index.to(images.device)], val_images, test_images, args, device)
        curves[str(n_classes)] = {"curve": measured.pop("curve"), "log": measured.pop("log")}
        rows.append({"classes": n_classes, "characters": len(index) // 4, **measured})
        rows.sort(key=lambda row: row["classes"])
        result = {
            "experiment": "ProtoNet 5-way 1-shot accuracy against the number of meta-training classes",
            "algorithm": "protonet", "encoder": "Conv4(n_way=None): MAML's strided four-layer network, no head",
            "split": "vinyals", "n_way": 5, "k_shot": 1, "transductive": True, "optimizer": "Adam",
            "all_classes": images.shape[0], "settings": settings, "subsets": rows,
            "complete": len(rows) == len(subsets), "device": str(device),
            "cpu_threads": torch.get_num_threads(), "wall_time_s": round(spent + time.perf_counter() - started, 1),
            "commit": source_commit(ROOT, (".",)),
            "command": shlex.join([Path(sys.executable).name, os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        }
        for path, obj in ((curves_path, curves), (result_path, result)):  # curves first: the JSON names them done
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(obj, indent=1) + "\n")
            os.replace(tmp, path)
        print(f"  meta-training classes {measured['train_accuracy']:.3f}, meta-test {measured['test_accuracy']:.3f}"
              f" ({measured['wall_time_s']:.0f} s)", flush=True)
    print(f"wrote {result_path}")


if __name__ == "__main__":
    main()
