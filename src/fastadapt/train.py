"""Meta-training: the outer loop, task sources, checkpoints that survive interruptions, resume."""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .algorithms import ALGORITHMS, MetaLearner, make_algorithm
from .data import save_atomic
from .models import Conv4, mlp
from .tasks import Episode, EpisodeSampler, sample_sinusoids

CHECKPOINT_VERSION = 1
DATASETS = ("omniglot", "sinusoid")
SPLITS = ("vinyals", "lake")


# Inner-loop and meta-learning rates when a config leaves them out (MAML paper settings for Omniglot 5-way;
# Reptile's outer step is SGD with step size 1 annealed to 0; ProtoNets have no inner loop).
ALGORITHM_DEFAULTS = {
    ("omniglot", "maml"): dict(inner_lr=0.4, inner_steps=1, meta_lr=1e-3),
    ("omniglot", "fomaml"): dict(inner_lr=0.4, inner_steps=1, meta_lr=1e-3),
    ("omniglot", "anil"): dict(inner_lr=0.4, inner_steps=1, meta_lr=1e-3),
    ("omniglot", "metasgd"): dict(inner_lr=0.4, inner_steps=1, meta_lr=1e-3),
    ("omniglot", "reptile"): dict(inner_lr=0.1, inner_steps=5, meta_lr=1.0),
    ("omniglot", "protonet"): dict(inner_lr=0.4, inner_steps=0, meta_lr=1e-3),
    ("sinusoid", "reptile"): dict(inner_lr=0.01, inner_steps=5, meta_lr=1.0),
    ("sinusoid", None): dict(inner_lr=0.01, inner_steps=1, meta_lr=1e-3),
}


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (saved as config.json and in the checkpoint)."""

    algo: str = "maml"
    dataset: str = "omniglot"
    split: str = "vinyals"
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 5
    meta_batch_size: int = 32
    inner_steps: int | None = None  # None: the algorithm's default (ALGORITHM_DEFAULTS)
    inner_lr: float | None = None
    meta_lr: float | None = None
    iterations: int = 1000
    seed: int = 0
    eval_inner_steps: int | None = None  # None: same as inner_steps
    val_every: int = 500
    val_tasks: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    first_order: bool = False  # only read by "maml"-like algorithms that are not first-order already

    def __post_init__(self):
        defaults = ALGORITHM_DEFAULTS.get((self.dataset, self.algo), ALGORITHM_DEFAULTS.get((self.dataset, None), {}))
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_config(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown config keys {sorted(unknown)}; known keys are {sorted(known)}.")
        return cls(**values)


def check_config(c: TrainConfig) -> None:
    """Raise ValueError naming the bad value and the limit."""
    if c.algo not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {c.algo!r}; choose one of {', '.join(ALGORITHMS)}.")
    if c.dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {c.dataset!r}; choose one of {', '.join(DATASETS)}.")
    if c.split not in SPLITS:
        raise ValueError(f"Unknown split {c.split!r}; choose one of {', '.join(SPLITS)}.")
    for name in ("n_way", "k_shot", "n_query", "meta_batch_size", "iterations", "val_tasks", "log_every",
                 "checkpoint_every"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name in ("inner_steps", "val_every", "eval_inner_steps"):
        value = getattr(c, name)
        if name == "eval_inner_steps" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value!r}.")
    for name in ("inner_lr", "meta_lr"):
        value = getattr(c, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if c.dataset == "omniglot" and c.k_shot + c.n_query > 20:
        raise ValueError(
            f"k_shot + n_query = {c.k_shot + c.n_query} but Omniglot has 20 drawings per character; "
            "keep k_shot + n_query <= 20."
        )


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or CUDA when present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The network a config asks for: MLP for sinusoids, Conv4 (ProtoNet variant for protonet) for Omniglot."""
    if config.dataset == "sinusoid":
        return mlp()
    if config.algo == "protonet":
        return Conv4(n_way=None, pool=True)
    return Conv4(n_way=config.n_way)


def build_algorithm(config: TrainConfig, model: torch.nn.Module) -> MetaLearner:
    """The algorithm a config asks for, with its inner-loop settings."""
    loss_fn = F.mse_loss if config.dataset == "sinusoid" else F.cross_entropy
    settings = dict(inner_lr=config.inner_lr, inner_steps=config.inner_steps, loss_fn=loss_fn)
    if config.algo in ("maml", "anil", "metasgd") and config.first_order:
        settings["first_order"] = True
    return make_algorithm(config.algo, model, **settings)


TaskSource = Callable[[int, int], Episode]  # (tasks, seed) -> Episode


def task_source(config: TrainConfig, part: str, device: torch.device, n_way: int | None = None,
                k_shot: int | None = None, n_query: int | None = None, data=None) -> TaskSource:
    """A function (tasks, seed) -> Episode on device for one part ("train", "val", "test") of the data."""
    n_way = config.n_way if n_way is None else n_way
    k_shot = config.k_shot if k_shot is None else k_shot
    n_query = config.n_query if n_query is None else n_query
    if config.dataset == "sinusoid":
        offset = {"train": 0, "val": 1, "test": 2}[part]  # disjoint seed streams stand in for splits
        return lambda tasks, seed: sample_sinusoids(tasks, k_shot, n_query, seed=3 * seed + offset).episode.to(device)
    from .data import omniglot_classes

    sampler = EpisodeSampler(omniglot_classes(config.split, part, data=data, device=device))
    return lambda tasks, seed: sampler.sample(tasks, n_way, k_shot, n_query, seed=seed)


def episode_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The seed of one rank's meta-batch at one iteration: runs are a pure function of (seed, iteration)."""
    return (seed * 1_000_003 + iteration) * 1_009 + rank


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
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION or "params" not in blob:
        raise ValueError(f"Checkpoint {path} is not a fastadapt checkpoint of version {CHECKPOINT_VERSION}.")
    return blob


def load_checkpoint(path: str | Path, device: str | torch.device | None = "cpu"):
    """(config, algorithm, params) from a checkpoint file, ready for evaluation."""
    device = pick_device(device)
    blob = read_checkpoint(path, map_location=device)
    config = TrainConfig.from_dict(blob["config"])
    model = build_model(config).to(device)
    algorithm = build_algorithm(config, model)
    return config, algorithm, {k: v.requires_grad_(True) for k, v in blob["params"].items()}


def _same_run(saved: dict, config: TrainConfig) -> list[str]:
    """Config keys that differ between a checkpoint and a run (iterations, logging and meta_lr may change)."""
    free = {"iterations", "val_every", "val_tasks", "log_every", "checkpoint_every", "meta_lr"}
    return [k for k, v in asdict(config).items() if k not in free and saved.get(k) != v]


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self.flag = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite."""


def init_distributed(device: str | None = None) -> torch.device:
    """Join the torchrun process group (gloo on CPU, NCCL on GPUs) when WORLD_SIZE > 1; returns this rank's device."""
    device = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _distributed() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) when it is not in use."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def meta_step(algorithm: MetaLearner, params: dict, optimizer: torch.optim.Optimizer, episode: Episode) -> dict:
    """One meta-update: meta-gradient on this process's tasks, averaged across processes, optimizer step."""
    grads, metrics = algorithm.meta_gradient(params, episode)
    rank, world = _distributed()
    if world > 1:
        flat = torch.cat([g.reshape(-1) for g in grads.values()])
        torch.distributed.all_reduce(flat)
        flat /= world
        grads = dict(zip(grads, flat.split([g.numel() for g in grads.values()])))
        grads = {k: g.view_as(params[k]) for k, g in grads.items()}
        stats = torch.tensor([metrics[k] for k in sorted(metrics)], dtype=torch.float64)
        torch.distributed.all_reduce(stats)
        metrics = dict(zip(sorted(metrics), (stats / world).tolist()))
    if not math.isfinite(metrics["loss"]) or not all(torch.isfinite(g).all() for g in grads.values()):
        raise TrainingDiverged(f"meta-loss is {metrics['loss']}")
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return metrics


def make_optimizer(config: TrainConfig, params: dict) -> torch.optim.Optimizer:
    """Adam on the meta-parameters; plain SGD for Reptile, whose step is theta + eps * (phi - theta)."""
    if config.algo == "reptile":
        return torch.optim.SGD(list(params.values()), lr=config.meta_lr)
    return torch.optim.Adam(list(params.values()), lr=config.meta_lr)


def train(config: TrainConfig, out: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True, data=None) -> dict:
    """Meta-train, writing out/checkpoint.pt, out/metrics.jsonl and out/config.json; returns the params."""
    from tqdm import tqdm

    from .evaluate import evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    rank, world = _distributed()
    if config.meta_batch_size % world:
        raise ValueError(f"meta_batch_size={config.meta_batch_size} must be divisible by the {world} processes.")
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    algorithm = build_algorithm(config, model)
    params = {k: v.to(device).detach().requires_grad_(True) for k, v in algorithm.init_params().items()}
    optimizer = make_optimizer(config, params)
    start = 0
    checkpoint_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"
    if resume and checkpoint_path.exists():
        blob = read_checkpoint(checkpoint_path, map_location=device)
        differ = _same_run(blob["config"], config)
        if differ:
            raise ValueError(
                f"{checkpoint_path} was trained with another configuration (differs in {', '.join(differ)}); "
                "use another --out folder or the same settings."
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(blob["params"][k])
        optimizer.load_state_dict(blob["optimizer"])
        for group in optimizer.param_groups:  # a resumed run may lower the meta-learning rate (after NaN, say)
            group["lr"] = config.meta_lr
        start = blob["iteration"]
    elif checkpoint_path.exists() and not resume:
        raise FileExistsError(f"{checkpoint_path} exists; pass resume=True (--resume) to continue it or use another folder.")
    if rank == 0:
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        _truncate_metrics(metrics_path, start)

    sample_train = task_source(config, "train", device, data=data)
    sample_val = task_source(config, "val", device, data=data) if config.val_every else None

    def save(iteration: int) -> None:
        if rank == 0:
            blob = {"version": CHECKPOINT_VERSION, "config": asdict(config), "iteration": iteration,
                    "params": {k: v.detach().cpu() for k, v in params.items()},
                    "optimizer": optimizer.state_dict()}
            save_atomic(blob, checkpoint_path)

    log = open(metrics_path, "a") if rank == 0 else None
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations,
               desc=f"{config.algo} {config.dataset}", disable=not progress or rank != 0)
    started = time.perf_counter()
    try:
        with _StopRequested() as stop:
            for iteration in bar:
                if config.algo == "reptile":  # linear annealing of the Reptile step size to 0
                    for group in optimizer.param_groups:
                        group["lr"] = config.meta_lr * (1 - iteration / config.iterations)
                episode = sample_train(config.meta_batch_size // world, episode_seed(config.seed, iteration, rank))
                try:
                    metrics = meta_step(algorithm, params, optimizer, episode)
                except TrainingDiverged as err:
                    raise TrainingDiverged(
                        f"Training stopped at iteration {iteration + 1}: {err}. The last good checkpoint "
                        f"({checkpoint_path}) was kept; resume with a lower --meta-lr, or start again with a "
                        "lower --inner-lr."
                    ) from None
                done = iteration + 1
                record = {"iteration": done, **metrics}
                if sample_val is not None and done % config.val_every == 0:
                    val = evaluate(algorithm, params, sample_val, tasks=config.val_tasks, seed=config.seed,
                                   inner_steps=config.eval_inner_steps, progress=False)
                    record.update({f"val_{k}": v for k, v in val.items() if k in ("accuracy", "ci95", "mse")})
                if log is not None and (done % config.log_every == 0 or "val_ci95" in record or done == config.iterations):
                    record["time_s"] = round(time.perf_counter() - started, 3)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix({k: round(v, 3) for k, v in metrics.items()})
                if done % config.checkpoint_every == 0 or done == config.iterations or stop.flag:
                    save(done)
                if stop.flag:
                    bar.write(f"Interrupted at iteration {done}; checkpoint saved, continue with --resume.")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        if log is not None:
            log.close()
    return {k: v.detach() for k, v in params.items()}


def _truncate_metrics(path: Path, iteration: int) -> None:
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
