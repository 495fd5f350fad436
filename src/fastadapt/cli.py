"""The command line: `python -m fastadapt train | evaluate | classify`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

import torch

from .algorithms import ALGORITHMS
from .checks import positive_int
from .config import DATASETS, SPLITS, TRAIN_PARTS, TrainConfig
from .training import TrainingDiverged


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastadapt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-train (settings left out: the paper's, fastadapt.protocols)")
    train.add_argument("--algo", choices=sorted(ALGORITHMS), default="maml")
    train.add_argument("--dataset", choices=DATASETS, default="omniglot")
    train.add_argument("--split", choices=SPLITS, default="vinyals")
    train.add_argument("--train-part", choices=TRAIN_PARTS, default="train",
                       help="train (validated on val) to select a model, trainval (with --val-every 0) for a final run")
    for name in ("n_way", "k_shot", "n_query", "meta_batch_size", "inner_steps", "iterations", "seed",
                 "eval_inner_steps", "val_every", "val_tasks", "log_every", "checkpoint_every", "inner_batch",
                 "eval_inner_batch", "val_n_way", "val_n_query", "patience"):
        train.add_argument("--" + name.replace("_", "-"), type=int)
    train.add_argument("--inner-optimizer", choices=("sgd", "adam"), help="Reptile's inner loop (published: adam)")
    train.add_argument("--retrain", action="store_true", default=None,
                       help="after early stopping (--patience), train again on trainval (Prototypical Networks)")
    for name in ("inner_lr", "meta_lr"):
        train.add_argument("--" + name.replace("_", "-"), type=float)
    train.add_argument("--first-order", action="store_true", default=None,
                       help="first-order inner loop (maml, anil, metasgd)")
    train.add_argument("--out", required=True, help="folder for checkpoint.pt, metrics.jsonl, config.json")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    train.add_argument("--data", help="Omniglot folder (default: $FASTADAPT_DATA, else download)")

    evaluate = commands.add_parser("evaluate", help="accuracy on new test tasks, with a 95%% interval")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--tasks", type=int, default=1000)
    evaluate.add_argument("--n-way", type=int)
    evaluate.add_argument("--k-shot", type=int)
    evaluate.add_argument("--n-query", type=int)
    evaluate.add_argument("--inner-steps", type=int)
    evaluate.add_argument("--split", choices=SPLITS)
    evaluate.add_argument("--part", choices=("val", "test"), default="test")
    evaluate.add_argument("--protocol", choices=("tasks", "lake"), default="tasks",
                          help="tasks: N-way K-shot tasks of the split's part; lake: Lake et al.'s 20-way one-shot "
                               "tasks (one alphabet of images_evaluation, two drawers), for models trained with "
                               "--split lake")
    evaluate.add_argument("--transductive", action=argparse.BooleanOptionalAction,
                          help="classify all queries of a task in one batch, or (--no-transductive) each on its own "
                               "(default: as the model's published protocol tests, fastadapt.protocols)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--data", help="Omniglot folder (default: $FASTADAPT_DATA, else download)")

    classify = commands.add_parser("classify", help="adapt to your own few-shot task given as image folders")
    classify.add_argument("--checkpoint", required=True)
    classify.add_argument("--support", required=True, help="one sub-folder of images per class")
    classify.add_argument("--query", required=True, help="images to classify")
    classify.add_argument("--inner-steps", type=int)
    classify.add_argument("--transductive", action="store_true",
                          help="classify all query images in one batch (BatchNorm statistics shared across queries)")
    classify.add_argument("--device", default="auto")
    return parser


def _omniglot(folder: str | None):
    """Omniglot from --data, or None to let the package find it ($FASTADAPT_DATA, cache, download)."""
    from .data import load_omniglot

    return load_omniglot(root=folder) if folder else None


def _train(args) -> None:
    from .distributed import init_distributed
    from .training import train

    settings = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = TrainConfig(**settings)  # what the command line leaves out comes from the hyperparameter table
    data = _omniglot(args.data)
    device = init_distributed(args.device)
    try:
        train(config, args.out, resume=args.resume, device=device, data=data)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(json.dumps({"out": args.out, "iterations": config.iterations}))


def _evaluate(args) -> None:
    from .checkpoints import load_checkpoint
    from .config import task_source
    from .distributed import pick_device
    from .evaluate import evaluate

    for name in ("n_way", "k_shot", "n_query"):
        if getattr(args, name) is not None:
            positive_int(name, getattr(args, name))
    device = pick_device(args.device)
    config, algorithm, params = load_checkpoint(args.checkpoint, device)
    n_way = config.n_way if args.n_way is None else args.n_way
    if config.dataset == "omniglot" and algorithm.fixed_ways and n_way != config.n_way:
        raise ValueError(
            f"--n-way {n_way} but this {config.algo} model has a {config.n_way}-way head; "
            f"evaluate with --n-way {config.n_way} or train a {n_way}-way model."
        )
    if args.split and args.split != config.split:
        raise ValueError(
            f"--split {args.split} but this model was meta-trained on the {config.split} split, whose training "
            f"characters overlap the {args.split} test set; evaluate with --split {config.split}."
        )
    data = _omniglot(args.data)
    if args.protocol == "lake":
        from .data import load_omniglot
        from .evaluate import lake_one_shot_tasks

        if config.dataset != "omniglot" or config.split != "lake":
            raise ValueError(f"--protocol lake tests on the 20 evaluation alphabets, but this model was meta-trained on "
                             f"the {config.split} split, which holds some of their characters; train with --split "
                             "lake (the background alphabets only).")
        n_way = 20 if args.n_way is None else n_way
        sample = lake_one_shot_tasks(data if data is not None else load_omniglot(), n_way=n_way, device=device)
    else:
        sample = task_source(config, args.part, device, n_way=n_way, k_shot=args.k_shot, n_query=args.n_query,
                             data=data)
    steps = args.inner_steps if args.inner_steps is not None else config.eval_inner_steps
    transductive = args.transductive
    if transductive is None:
        from .protocols import protocol

        transductive = protocol(config.dataset, config.algo, n_way, config.k_shot).transductive
    print(json.dumps(evaluate(algorithm, params, sample, tasks=args.tasks, seed=args.seed, inner_steps=steps,
                              transductive=transductive)))


def _classify(args) -> None:
    from .checkpoints import load_checkpoint
    from .distributed import pick_device
    from .evaluate import predict_queries
    from .images import load_query_folder, load_support_folder

    device = pick_device(args.device)
    config, algorithm, params = load_checkpoint(args.checkpoint, device)
    if config.dataset != "omniglot":
        raise ValueError(f"{args.checkpoint} is a {config.dataset} model; classify needs an Omniglot image model.")
    x_support, y_support, names = load_support_folder(args.support)
    x_query, files = load_query_folder(args.query)
    if algorithm.fixed_ways and len(names) != config.n_way:
        raise ValueError(
            f"The support folder has {len(names)} classes but this {config.algo} model is {config.n_way}-way; "
            f"give exactly {config.n_way} class folders, or use a protonet checkpoint (any number of classes)."
        )
    steps = args.inner_steps if args.inner_steps is not None else config.eval_inner_steps
    outputs = predict_queries(algorithm, params, x_support.to(device), y_support.to(device), x_query.to(device),
                              steps, transductive=args.transductive)  # (queries, n_way)
    for file, label in zip(files, outputs.argmax(-1).tolist()):
        print(json.dumps({"file": str(file), "label": names[label]}))


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m fastadapt` and the `fastadapt` script."""
    args = _parser().parse_args(argv)
    command = {"train": _train, "evaluate": _evaluate, "classify": _classify}[args.command]
    try:
        command(args)
    except (ValueError, FileNotFoundError, FileExistsError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # dataset problems and the like: one line, no traceback
        from .data import DatasetError

        if isinstance(err, DatasetError):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
