"""Pre-train the baseline of the book's "A baseline every reader should see" chapter, and save it.

    python scripts/pretrain_baseline.py                        # Conv4 on the 4,800 trainval classes
    python scripts/pretrain_baseline.py --steps 200 --out /tmp/try   # a quick try

Supervised pre-training (Chen et al. 2019; Tian et al. 2020): MAML's Conv4 network with one output per
class is trained as a single classifier over every class of a part of the Omniglot split (each character
and each of its 90-degree rotations is a class, as in meta-training), with Adam and a cosine learning-rate
schedule (fastadapt.baselines.pretrain_classifier). Its features are then used by a new linear head per
few-shot task; the chapter does that part.

Writes OUT/NAME/checkpoint.pt (the feature network without its classification head, about 0.5 MB),
OUT/NAME/metrics.jsonl (mean loss and accuracy of the batches, every --every steps) and OUT/NAME.json
(settings, steps done, complete, device, wall time, commit, exact command). The state needed to resume
(head and optimizer, several MB) stays in $FASTADAPT_CACHE/pretrain-resume/NAME.pt, never in results/:
run the same command again and an interrupted run continues where its last checkpoint stopped. Only
--steps may change on resume (to shorten or lengthen a run that turned out slower than planned); the
JSON's "history" then says so, and the cosine schedule follows the new length from that step on.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import fastadapt
from fastadapt.results import source_commit
from fastadapt.baselines import pretrain_classifier, save_pretrained
from fastadapt.data import cache_dir, save_atomic

ROOT = Path(__file__).resolve().parent.parent




def main() -> None:
    """Pre-train (or continue pre-training), saving the features, the curve and the JSON every --every steps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("vinyals", "lake"), default="vinyals")
    parser.add_argument("--part", choices=("train", "trainval"), default="trainval",
                        help="classes to pre-train on: the part the meta-learners of results/omniglot train on")
    parser.add_argument("--steps", type=int, default=4000, help="Adam steps (batches)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam rate, cosine-annealed to 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=250, help="steps between checkpoints and logged records")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default=None, help="default: conv4-<split>-<part>")
    parser.add_argument("--out", default=str(ROOT / "results" / "baselines"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = fastadapt.pick_device(args.device)
    name = args.name or f"conv4-{args.split}-{args.part}"
    out, run = Path(args.out), Path(args.out) / name
    run.mkdir(parents=True, exist_ok=True)
    resume_path = cache_dir() / "pretrain-resume" / f"{name}.pt"
    settings = dict(split=args.split, part=args.part, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed)

    images = fastadapt.omniglot_classes(args.split, args.part).to(device)  # (classes, 20, 1, 28, 28) uint8
    torch.manual_seed(args.seed)
    model = fastadapt.Conv4(n_way=images.shape[0]).to(device)  # MAML's network, one output per class
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start, wall, history = 0, 0.0, []
    if resume_path.exists():
        blob = torch.load(resume_path, map_location=device, weights_only=True)
        fixed = {k: v for k, v in settings.items() if k != "steps"}  # --steps may change on resume, nothing else
        if {k: v for k, v in blob["settings"].items() if k != "steps"} != fixed:
            raise SystemExit(f"{resume_path} belongs to a run with other settings ({blob['settings']}); "
                             "delete it or pass the same settings.")
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        start, wall, history = blob["step"], blob["wall_time_s"], blob.get("history", [])
        if blob["settings"]["steps"] != args.steps:  # the cosine schedule follows the new length from here on
            if start > args.steps:
                raise SystemExit(f"{name} has done {start} steps already; pass --steps {start} or more.")
            history.append(f"planned for {blob['settings']['steps']:,} steps, changed to {args.steps:,} at step "
                           f"{start:,}; the learning rate then follows the cosine of the {args.steps:,}-step run")
        print(f"resuming {name} at step {start} of {args.steps}", flush=True)
    metrics_path = run / "metrics.jsonl"
    kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.exists() else [])
            if line and json.loads(line)["step"] <= start]  # drop records written after the checkpoint
    metrics_path.write_text("".join(line + "\n" for line in kept))

    command = "python scripts/pretrain_baseline.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started, recent = time.perf_counter(), []

    def checkpoint(done: int, optimizer: torch.optim.Optimizer, losses: list[float]) -> None:
        """Save the resume state, the features, one curve record and the JSON."""
        elapsed = wall + time.perf_counter() - started
        save_atomic({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": done, "wall_time_s": elapsed, "history": history}, resume_path)
        info = dict(network={"pool": False}, classes=int(images.shape[0]), steps_done=done, **settings)
        save_pretrained(run / "checkpoint.pt", model, **info)
        window = losses[-min(args.every, len(losses)):]  # the steps since the previous record
        record = {"step": done, "loss": sum(window) / len(window), "lr": optimizer.param_groups[0]["lr"],
                  "time_s": round(elapsed, 1)}
        with open(metrics_path, "a") as log:
            log.write(json.dumps(record) + "\n")
        result = {
            "name": name, "network": "fastadapt.Conv4 (MAML's: stride-2 convolutions), head dropped after pre-training",
            "split": args.split, "part": args.part, "classes": int(images.shape[0]),
            "images": int(images.shape[0] * images.shape[1]), "settings": settings,
            "steps_done": done, "steps_total": args.steps, "complete": done == args.steps,
            "epochs_done": round(done * args.batch_size / (images.shape[0] * images.shape[1]), 2),
            "final_loss": record["loss"], "history": history,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "wall_time_s": round(elapsed, 1), "commit": source_commit(ROOT, ("src",)), "command": command,
            "run": f"baselines/{name}",
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"step {done}/{args.steps}: loss {record['loss']:.3f}, {elapsed / 60:.1f} min", flush=True)

    if start < args.steps:
        pretrain_classifier(model, images, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            start=start, optimizer=optimizer, every=args.every, callback=checkpoint)
    print(f"done: {out / (name + '.json')}")


if __name__ == "__main__":
    main()
