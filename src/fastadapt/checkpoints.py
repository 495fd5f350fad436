"""What a run keeps on disk and how it continues: checkpoint.pt, metrics.jsonl, config.json, and resume checks."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .algorithms import MetaLearner
from .algorithms.base import Schedule
from .config import TrainConfig, build_algorithm, build_model
from .data import save_atomic
from .distributed import pick_device

CHECKPOINT_VERSION = 2  # 2: published Vinyals split, MLP parameters body.* / head.*, the outer schedule saved
RESUMABLE = {"iterations", "val_every", "val_tasks", "log_every", "checkpoint_every", "meta_lr"}  # may change on resume
# Settings added after checkpoints of this version were first written, with the value those runs used
ADDED = {"inner_optimizer": "sgd", "inner_batch": 0, "eval_inner_batch": 0, "val_n_way": 0, "val_n_query": 0,
         "patience": 0, "retrain": False}


@dataclass
class Selection:
    """Model selection by validation loss (early stopping), and the phase of a run that retrains on trainval."""

    phase: int = 1  # 1: the run as configured; 2: the retraining on trainval after early stopping (config.retrain)
    phase_start: int = 0  # iteration at which the current phase began (iterations count on across phases)
    phase_end: int = 0  # iteration at which it ends (phase 1: config.iterations, or earlier when patience runs out)
    best_loss: float = math.inf  # lowest validation loss so far (phase 1)
    best_point: int = 0  # the validation point (1, 2, ...) that gave it
    wait: int = 0  # validation points since then
    finished: bool = False  # every phase done


@dataclass
class Run:
    """The state a checkpoint holds: the algorithm (and its own state), its meta-parameters, the network's buffers
    (BatchNorm running averages), the outer optimizer and schedule, model selection, and the time trained so far."""

    config: TrainConfig
    algorithm: MetaLearner
    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Schedule | None
    iteration: int = 0  # meta-iterations done, over all phases
    selection: Selection = field(default_factory=Selection)
    time_s: float = 0.0  # wall-clock seconds of training so far, over every session that resumed the run
    best: dict | None = None  # {"params", "buffers"} of the best validation point, when selecting without retraining


def fresh_run(config: TrainConfig, device: torch.device, iterations: int) -> Run:
    """A run at its start: the seed's initialisation, a new optimizer and a schedule spanning `iterations`."""
    torch.manual_seed(config.seed)  # the initialisation is a function of the seed
    algorithm = build_algorithm(config, build_model(config).to(device))
    algorithm.model.train()
    params = {k: v.to(device).detach().requires_grad_(True) for k, v in algorithm.init_params().items()}
    return Run(config, algorithm, params, *algorithm.make_optimizer(params, config.meta_lr, iterations))


def start_run(config: TrainConfig, out: Path, resume: bool, device: torch.device) -> Run:
    """A fresh run, or (resume=True) the run saved in out/ after checking that it is the same run."""
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not resume:
        raise FileExistsError(f"{checkpoint} exists; pass resume=True (--resume) to continue it or use another folder.")
    run = fresh_run(config, device, config.iterations)
    run.selection.phase_end = config.iterations
    if resume and checkpoint.exists():
        blob = read_checkpoint(checkpoint, map_location=device)
        refuse_another_run({**ADDED, **blob["config"]}, run, checkpoint)
        selection = Selection(**blob.get("selection", {}))
        if selection.phase == 2:  # the retraining phase has its own schedule length
            run = fresh_run(config, device, selection.phase_end - selection.phase_start)
        with torch.no_grad():
            for k, p in run.params.items():
                p.copy_(blob["params"][k])
        load_buffers(run.algorithm.model, blob, checkpoint)
        run.algorithm.load_state_dict(blob.get("algorithm", {}))
        run.optimizer.load_state_dict(blob["optimizer"])
        if run.scheduler is not None:
            run.scheduler.load_state_dict(blob["scheduler"])
        if blob["config"]["meta_lr"] != config.meta_lr:  # a resumed run may lower the rate (after NaN, say)
            change_meta_lr(run, config.meta_lr / blob["config"]["meta_lr"])
        run.iteration, run.time_s, run.best = blob["iteration"], blob.get("time_s", 0.0), blob.get("best")
        exhausted = config.patience and selection.wait > config.patience  # model selection ended phase 1
        if selection.phase == 1 and not exhausted:  # iterations may change on resume: more continue a finished run
            selection.phase_end = config.iterations
            selection.finished = selection.finished and run.iteration >= config.iterations
        run.selection = selection
    return run


def load_buffers(model: torch.nn.Module, blob: dict, path: Path) -> None:
    """Copy a checkpoint's buffers (BatchNorm running averages) into the model, refusing a checkpoint without them."""
    buffers = dict(model.named_buffers())
    if not buffers:
        return
    if not blob.get("buffers"):
        raise ValueError(f"Checkpoint {path} has no BatchNorm running averages, but this {blob['config']['algo']} "
                         "network keeps them (it was written before they were saved); train it again.")
    with torch.no_grad():
        for k, b in buffers.items():
            b.copy_(blob["buffers"][k])


def refuse_another_run(saved: dict, run: Run, path: Path) -> None:
    """Raise ValueError when a checkpoint's settings differ from the run's where they may not."""
    differ = [k for k, v in asdict(run.config).items() if k not in RESUMABLE and saved.get(k) != v]
    if differ:
        raise ValueError(f"{path} was trained with another configuration (differs in {', '.join(differ)}); "
                         "use another --out folder or the same settings.")
    if run.algorithm.schedule_spans_iterations and saved["iterations"] != run.config.iterations:
        raise ValueError(
            f"{path} anneals {run.config.algo}'s outer step size to 0 over iterations={saved['iterations']} (the "
            f"schedule is saved in the checkpoint), but this run asks for iterations={run.config.iterations}; resume "
            f"with iterations={saved['iterations']} (--iterations {saved['iterations']}) or use another --out folder."
        )


def change_meta_lr(run: Run, factor: float) -> None:
    """Scale the outer learning rate, and the whole schedule when there is one, by factor."""
    for group in run.optimizer.param_groups:
        group["lr"] = run.config.meta_lr if run.scheduler is None else group["lr"] * factor
        if run.scheduler is not None:
            group["initial_lr"] = run.config.meta_lr
    if run.scheduler is not None:
        run.scheduler.base_lrs = [run.config.meta_lr for _ in run.scheduler.base_lrs]


def save_checkpoint(run: Run, path: Path) -> None:
    """Write the run's state atomically (a crash never leaves half a checkpoint)."""
    save_atomic({"version": CHECKPOINT_VERSION, "config": asdict(run.config), "iteration": run.iteration,
                 "params": {k: v.detach().cpu() for k, v in run.params.items()},
                 "buffers": {k: v.cpu() for k, v in run.algorithm.model.named_buffers()},
                 "algorithm": run.algorithm.state_dict(),
                 "optimizer": run.optimizer.state_dict(),
                 "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
                 "selection": asdict(run.selection), "time_s": round(run.time_s, 3), "best": run.best}, path)


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint dict, or a clear error if the file is missing, damaged or from another version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train first with `python -m fastadapt train --out DIR`.")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"Checkpoint {path} is damaged or not a fastadapt checkpoint ({reason}).") from err
    if isinstance(blob, dict) and blob.get("version") == 1:
        raise ValueError(f"Checkpoint {path} is of version 1, written before the published Vinyals split (its test "
                         "characters overlap today's training characters) and the MLP's body/head names; "
                         "train it again.")
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION or "params" not in blob:
        raise ValueError(f"Checkpoint {path} is not a fastadapt checkpoint of version {CHECKPOINT_VERSION}.")
    return blob


def load_checkpoint(path: str | Path, device: str | torch.device | None = "cpu"):
    """(config, algorithm, params) from a checkpoint file, ready for evaluation: the network in eval() with its
    running averages (if it keeps any), the algorithm with its own state (Reptile: its inner Adam's)."""
    device = pick_device(device)
    blob = read_checkpoint(path, map_location=device)
    config = TrainConfig.from_dict({**ADDED, **blob["config"]})
    algorithm = build_algorithm(config, build_model(config).to(device))
    load_buffers(algorithm.model, blob, Path(path))
    algorithm.load_state_dict(blob.get("algorithm", {}))
    algorithm.model.eval()
    return config, algorithm, {k: v.requires_grad_(True) for k, v in blob["params"].items()}


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (so a resumed log equals an uninterrupted one)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a crash in the middle of a write
            continue
        if record["iteration"] <= iteration:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
