"""Meta-training: the outer loop theta <- theta - beta * grad L_meta(theta), one meta-batch of B tasks at a time.

The loop is train(); the state it saves and resumes lives in checkpoints.py, the settings in config.py,
the processes in distributed.py. Hooks does what happens between steps: log, validate, checkpoint.
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.func import grad_and_value

from .algorithms import MetaLearner
from .algorithms.base import metrics as metrics_of
from .checkpoints import Run, Selection, fresh_run, save_checkpoint, start_run, truncate_metrics
from .config import TrainConfig, task_source
from .core import batched_loss
from .distributed import average_across_processes, pick_device, process_group
from .tasks import Episode, episode_seed


class TrainingDiverged(RuntimeError):
    """The meta-loss or a meta-gradient became NaN or infinite."""


def functional_meta_gradient(algorithm: MetaLearner):
    """(params, episode) -> (grads, metrics): the algorithm's meta-gradient as one pure torch.func function (vmap over
    tasks, inner gradients by torch.func.grad, the outer one by grad_and_value), which torch.compile can capture
    whole, second order included. For the algorithms whose meta-gradient is the gradient of the query loss
    (MAML, first-order MAML, ANIL, Meta-SGD); Reptile and ProtoNets keep their own meta_gradient."""
    if type(algorithm).meta_gradient is not MetaLearner.meta_gradient:
        raise ValueError(f"{algorithm.name} has its own meta_gradient; only MAML-family algorithms have a functional one.")
    vectorized = replace(algorithm, vectorize=True)

    def loss(params, x_support, y_support, x_query, y_query):
        outputs = vectorized.predict(params, x_support, y_support, x_query)
        return batched_loss(outputs, y_query, vectorized.loss_fn), outputs

    gradient = grad_and_value(loss, has_aux=True)

    def meta_gradient(params: dict, episode: Episode) -> tuple[dict, dict]:
        grads, (value, outputs) = gradient(params, *episode)
        return grads, metrics_of(value, outputs, episode.y_query)

    return meta_gradient


def compiled_meta_gradient(algorithm: MetaLearner, **compile_options):
    """functional_meta_gradient under torch.compile (options passed on, e.g. backend="aot_eager" or
    mode="reduce-overhead" for CUDA graphs); the first call compiles (minutes on a CPU), later calls reuse it."""
    return torch.compile(functional_meta_gradient(algorithm), **compile_options)


def meta_step(algorithm: MetaLearner, params: dict, optimizer: torch.optim.Optimizer, episode: Episode,
              meta_gradient=None) -> dict:
    """One meta-update: meta-gradient on this process's tasks, averaged across processes, optimizer step.

    meta_gradient replaces algorithm.meta_gradient (a compiled one, say). Returns the metrics as 0-dim tensors
    on the parameters' device; the step's one host synchronisation is the finiteness check of the loss and all
    gradients together.
    """
    grads, metrics = (meta_gradient or algorithm.meta_gradient)(params, episode)
    device = next(iter(grads.values())).device
    metrics = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in metrics.items()}
    grads, metrics = average_across_processes(grads, metrics)
    norms = torch.stack([g.norm() for g in grads.values()])  # (parameter tensors,)
    if not torch.cat([norms, metrics["loss"].reshape(1)]).isfinite().all():  # the step's one host synchronisation
        loss = float(metrics["loss"])
        gradient = " and a gradient is not finite" if math.isfinite(loss) else ""
        raise TrainingDiverged(f"meta-loss is {loss:.4g}{gradient}")
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return metrics


def train(config: TrainConfig, out: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True, data=None, compile_step: bool | dict = False) -> dict:
    """Meta-train, writing out/checkpoint.pt, out/metrics.jsonl and out/config.json; returns the params.

    compile_step=True (or a dict of torch.compile options) takes each meta-gradient with compiled_meta_gradient,
    for the algorithms that have a functional one (a GPU's speed-up; on a CPU compiling takes minutes).

    With patience > 0 the run stops once `patience` validation points pass without a lower validation loss;
    with retrain, it then trains again from the same initialisation on the trainval characters for
    (best point - 1 + patience) validation intervals (Prototypical Networks' trainval.py). Iterations count on
    across both phases, so the metrics log and the checkpoint describe one run.
    """
    out, device = Path(out), pick_device(device)
    rank, world = process_group()
    if config.meta_batch_size % world:
        raise ValueError(f"meta_batch_size={config.meta_batch_size} must be divisible by the {world} processes.")
    if config.patience and world > 1:
        raise ValueError("Early stopping (patience > 0) runs in one process; train without torchrun.")
    out.mkdir(parents=True, exist_ok=True)
    run = start_run(config, out, resume, device)
    if run.algorithm.sequential and world > 1:
        raise ValueError(f"{config.algo}'s inner optimizer carries its state from task to task (the published order), "
                         "which one process must do; train without torchrun, or with inner_optimizer='sgd'.")
    compiled = None
    if compile_step and type(run.algorithm).meta_gradient is MetaLearner.meta_gradient:
        compiled = compiled_meta_gradient(run.algorithm, **(compile_step if isinstance(compile_step, dict) else {}))
    with StopRequested() as stop, Hooks(run, out, rank, progress, data) as hooks:
        while not run.selection.finished:
            part = config.train_part if run.selection.phase == 1 else "trainval"
            sample = task_source(config, part, device, data=data)  # p(T): tasks of the training characters
            for t in range(run.iteration, run.selection.phase_end):
                episode = sample(config.meta_batch_size // world, episode_seed(config.seed, t, rank))  # this rank's
                try:
                    metrics = meta_step(run.algorithm, run.params, run.optimizer, episode,  # theta <- theta - beta*g
                                        compiled if run.selection.phase == 1 or not config.retrain else None)
                except TrainingDiverged as err:
                    raise hooks.diverged(t + 1, err) from None
                if run.scheduler is not None:
                    run.scheduler.step()  # beta for the next iteration
                run.iteration = t + 1
                if hooks.after_step(metrics, stopping=stop.flag):  # patience ran out
                    break
            run = hooks.end_phase()
    return {k: v.detach() for k, v in run.params.items()}


class Hooks:
    """What happens between meta-steps on rank 0: the metrics log, validation, model selection and checkpoints."""

    def __init__(self, run: Run, out: Path, rank: int, progress: bool, data):
        from tqdm import tqdm

        self.run, self.config, self.rank, self.data = run, run.config, rank, data
        self.checkpoint, self.started = out / "checkpoint.pt", time.perf_counter() - run.time_s
        self.log, self.sample_val = None, None
        c = self.config
        if rank == 0 and c.val_every:  # validation tasks: val_n_way-way, k_shot-shot, val_n_query queries per class
            self.sample_val = task_source(c, "val", run.params[next(iter(run.params))].device,
                                          n_way=c.val_n_way or c.n_way, n_query=c.val_n_query or c.n_query, data=data)
        if rank == 0:
            (out / "config.json").write_text(json.dumps(asdict(c), indent=2) + "\n")
            truncate_metrics(out / "metrics.jsonl", run.iteration)
            self.log = open(out / "metrics.jsonl", "a")
        self.bar = tqdm(initial=run.iteration, total=run.selection.phase_end, disable=not progress or rank != 0,
                        desc=f"{c.algo} {c.dataset}")

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()

    def after_step(self, metrics: dict, stopping: bool) -> bool:
        """Log at log points and validation points, validate every val_every (in phase 1), save every
        checkpoint_every; True when model selection stops the phase here (patience ran out)."""
        c, run, done = self.config, self.run, self.run.iteration
        self.bar.update(1)
        selection = run.selection
        last = done == selection.phase_end
        validate = self.sample_val is not None and selection.phase == 1 and done % c.val_every == 0
        exhausted = False
        if self.log is not None and (done % c.log_every == 0 or validate or last):
            record = {"iteration": done, **{k: float(v) for k, v in metrics.items()}}  # host sync at log points only
            if c.retrain:
                record["phase"] = selection.phase
            if validate:
                record.update(self.validate())
                exhausted = self.select(record.get("val_loss", record.get("val_mse")), done // c.val_every)
            run.time_s = time.perf_counter() - self.started
            record["time_s"] = round(run.time_s, 3)
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
            self.bar.set_postfix({k: round(float(v), 3) for k, v in metrics.items()})
        if exhausted:
            selection.phase_end = done
        if self.rank == 0 and (done % c.checkpoint_every == 0 or done == selection.phase_end or stopping):
            run.time_s = time.perf_counter() - self.started
            save_checkpoint(run, self.checkpoint)
        if stopping:
            self.bar.write(f"Interrupted at iteration {done}; checkpoint saved, continue with --resume.")
            raise KeyboardInterrupt
        return exhausted

    def select(self, val_loss: float, point: int) -> bool:
        """Keep the lowest validation loss (and, without retraining, its parameters); True once `patience` points
        have passed without a lower one (train.py stops when its wait exceeds the patience)."""
        c, run, selection = self.config, self.run, self.run.selection
        if val_loss < selection.best_loss:
            selection.best_loss, selection.best_point, selection.wait = val_loss, point, 0
            if c.patience and not c.retrain:
                run.best = {"params": {k: v.detach().cpu().clone() for k, v in run.params.items()},
                            "buffers": {k: v.cpu().clone() for k, v in run.algorithm.model.named_buffers()}}
            return False
        selection.wait += 1
        return bool(c.patience) and selection.wait > c.patience

    def end_phase(self) -> Run:
        """After phase 1: start the retraining on trainval (config.retrain), or keep the best parameters
        (patience without retraining); then the run is finished. Returns the run to continue."""
        c, run, selection = self.config, self.run, self.run.selection
        if selection.phase == 1 and c.retrain and selection.best_point:
            length = (selection.best_point - 1 + c.patience) * c.val_every  # trainval.py: best epoch + patience epochs
            restart = fresh_run(c, run.params[next(iter(run.params))].device, max(length, 1))
            restart.iteration, restart.time_s = run.iteration, run.time_s
            restart.selection = Selection(phase=2, phase_start=run.iteration, phase_end=run.iteration + max(length, 1),
                                          best_loss=selection.best_loss, best_point=selection.best_point,
                                          wait=selection.wait)
            self.run = restart
            self.bar.reset(total=restart.selection.phase_end)
            self.bar.update(restart.iteration)
        else:
            if run.best is not None:
                with torch.no_grad():
                    for k, p in run.params.items():
                        p.copy_(run.best["params"][k])
                    for k, b in run.algorithm.model.named_buffers():
                        b.copy_(run.best["buffers"][k])
            selection.finished = True
        if self.rank == 0:
            self.run.time_s = time.perf_counter() - self.started
            save_checkpoint(self.run, self.checkpoint)
        return self.run

    def validate(self) -> dict:
        """Accuracy (or MSE), its interval and the mean query loss on val_tasks tasks of the validation characters,
        with the network in eval() (BatchNorm running averages, where the network keeps them)."""
        from .evaluate import evaluate

        c = self.config
        model = self.run.algorithm.model
        model.eval()
        try:
            result = evaluate(self.run.algorithm, self.run.params, self.sample_val, tasks=c.val_tasks, seed=c.seed,
                              inner_steps=c.eval_inner_steps, progress=False)
        finally:
            model.train()
        return {f"val_{k}": v for k, v in result.items() if k in ("accuracy", "ci95", "mse", "loss")}

    def diverged(self, iteration: int, err: TrainingDiverged) -> TrainingDiverged:
        """The error to raise when the step at `iteration` diverged: what happened, what was kept, what to do."""
        return TrainingDiverged(
            f"Training stopped at iteration {iteration}: {err}. The last good checkpoint ({self.checkpoint}) was "
            "kept; resume with a lower --meta-lr, or start again with a lower --inner-lr."
        )


class StopRequested:
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
