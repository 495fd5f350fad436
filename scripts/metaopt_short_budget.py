"""The short-budget Omniglot comparison of book/03_meta_optimization.ipynb, with several replicates.

Six algorithms (MAML, first-order MAML, ANIL, Meta-SGD, Reptile, Prototypical Networks) are each meta-trained
for a few dozen meta-iterations of 8 tasks (5-way 1-shot) and scored on meta-test tasks, once per replicate:
replicate r trains with seed r and is tested on tasks drawn with seed r. The per-task accuracies, the
training logs and how they were made go to results/metaopt/omniglot-5w1s-short-budget.json, which the
chapter loads (it reruns one of the runs to check that the file still matches the code).

The experiment itself is the notebook's code cell tagged `metaopt-experiment` (the function
`short_budget_run`); this script executes that cell, so the committed numbers and the chapter's live
fallback come from the same lines. Each (algorithm, replicate) is written to the file as soon as it is
done, and running the command again continues where it stopped (with the same settings).

    python scripts/metaopt_short_budget.py [--replicates 5] [--iterations 35] [--test-tasks 200]

The defaults take about 10 minutes of one CPU core (torch.set_num_threads(1)), measured as the sum of the
runs' processor times (a GPU is used when there is one).
"""
from __future__ import annotations

import argparse
import hashlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastadapt
from fastadapt.results import source_commit

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "book" / "03_meta_optimization.ipynb"
TAG = "metaopt-experiment"
ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet")
SETTINGS = ("replicates", "iterations", "test_tasks")


def experiment(notebook: Path = NOTEBOOK) -> tuple[callable, str]:
    """short_budget_run, defined by executing the notebook's cell tagged metaopt-experiment, and the
    sha256 of that cell's source."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if TAG in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        sys.exit(f"{notebook} must have exactly one code cell tagged {TAG!r}; it has {len(tagged)}.")
    source = "".join(tagged[0]["source"])
    namespace = {"dataclasses": dataclasses, "time": time, "Path": Path, "torch": torch, "fastadapt": fastadapt}
    exec(compile(source, f"{notebook.name} [{TAG}]", "exec"), namespace)  # noqa: S102 (our own notebook)
    return namespace["short_budget_run"], hashlib.sha256(source.encode()).hexdigest()




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=5, help="training seeds 0, 1, ...; each with its own test tasks")
    parser.add_argument("--iterations", type=int, default=35, help="meta-iterations of 8 tasks per run")
    parser.add_argument("--test-tasks", type=int, default=200, help="meta-test tasks per run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "metaopt" / "omniglot-5w1s-short-budget.json")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: a GPU when there is one)")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="the notebook whose cell defines the experiment")
    args = parser.parse_args()

    torch.set_num_threads(1)  # small networks: on a CPU, extra threads mostly wait for each other
    device = fastadapt.pick_device(args.device)
    short_budget_run, cell_sha256 = experiment(args.notebook)
    data = fastadapt.load_omniglot()
    settings = {"replicates": args.replicates, "iterations": args.iterations, "test_tasks": args.test_tasks}
    if args.out.exists():
        saved = json.loads(args.out.read_text())
        if {k: saved[k] for k in SETTINGS} != settings or saved["source_sha256"] != cell_sha256:
            sys.exit(f"{args.out} holds a run with other settings ({ {k: saved[k] for k in SETTINGS} }) or from "
                     "another version of the experiment cell; use the same ones to continue it, or another --out.")
    else:
        saved = {
            "experiment": "Omniglot 5-way 1-shot, every algorithm meta-trained for the same short budget",
            **settings, "meta_batch_size": 8, "test_queries": 5, "transductive": True, "split": "vinyals",
            "algorithms": list(ALGORITHMS), "runs": {algo: {} for algo in ALGORITHMS},
            "classes": {part: len(fastadapt.omniglot_classes("vinyals", part, data=data)) for part in ("train", "test")},
            "device": str(device), "torch": torch.__version__, "fastadapt": fastadapt.__version__,
            "python": platform.python_version(), "commit": source_commit(ROOT, ("src", "book/03_meta_optimization.ipynb")),
            "command": (f"python scripts/metaopt_short_budget.py --replicates {args.replicates} "
                        f"--iterations {args.iterations} --test-tasks {args.test_tasks}"),
            "source": f"book/03_meta_optimization.ipynb, code cell tagged {TAG}", "source_sha256": cell_sha256,
        }
    started = time.perf_counter()
    for replicate in range(args.replicates):
        for algo in ALGORITHMS:
            if str(replicate) in saved["runs"][algo]:
                continue
            with tempfile.TemporaryDirectory(prefix=f"metaopt-{algo}-{replicate}-") as folder:
                run = short_budget_run(algo, replicate, args.iterations, args.test_tasks, folder, data, device)
            saved["runs"][algo][str(replicate)] = run
            args.out.parent.mkdir(parents=True, exist_ok=True)
            part = args.out.with_name(args.out.name + ".part")
            part.write_text(json.dumps(saved, separators=(",", ":")) + "\n")
            os.replace(part, args.out)  # never a half-written file
            accuracy = sum(run["scores"]) / len(run["scores"])
            print(f"replicate {replicate} {algo:9s} accuracy {accuracy:.3f} ({run['cpu_s']:.0f} CPU s, "
                  f"{time.perf_counter() - started:.0f} s elapsed)", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
