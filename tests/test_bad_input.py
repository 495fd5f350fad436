"""Bad input gets one clear error that names the value and the limit, never a traceback.

Python API: ValueError (or DatasetError) with a message naming the setting, the value and the limit.
Command line: exit status 2, one `error:` line on stderr, no Traceback. Real command-line processes
cost 3 s or more each (importing torch), and tests/test_cli.py already runs the config, argparse,
checkpoint and image-folder cases that way; here only three whole-path cases (missing data, an
error raised inside the training loop, classify's class count) run as processes, two at a time in
one fixture, and the other command-line cases call main() in this process.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastadapt import TrainConfig, build_algorithm, build_model, cli, task_source
from fastadapt.algorithms import ALGORITHMS, make_algorithm
from fastadapt.checkpoints import CHECKPOINT_VERSION
from fastadapt.evaluate import evaluate
from fastadapt.images import load_query_folder, load_support_folder
from fastadapt.models import Conv4

ROOT = Path(__file__).resolve().parents[1]


# Python API -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(n_way=0), "n_way must be a positive integer, got 0."),
    (dict(n_way=-5), "n_way must be a positive integer, got -5."),
    (dict(n_way=2.5), "n_way must be a positive integer, got 2.5."),
    (dict(n_way=True), "n_way must be a positive integer, got True."),
    (dict(k_shot=0), "k_shot must be a positive integer, got 0."),
    (dict(n_query=0), "n_query must be a positive integer, got 0."),
    (dict(meta_batch_size=0), "meta_batch_size must be a positive integer, got 0."),
    (dict(meta_batch_size=-4), "meta_batch_size must be a positive integer, got -4."),
    (dict(iterations=0), "iterations must be a positive integer, got 0."),
    (dict(val_tasks=0), "val_tasks must be a positive integer, got 0."),
    (dict(log_every=0), "log_every must be a positive integer, got 0."),
    (dict(checkpoint_every=-1), "checkpoint_every must be a positive integer, got -1."),
    (dict(inner_steps=-1), "inner_steps must be 0 or more, got -1."),
    (dict(val_every=-1), "val_every must be 0 or more, got -1."),
    (dict(eval_inner_steps=-2), "eval_inner_steps must be 0 or more, got -2."),
    (dict(inner_lr=-0.1), "inner_lr must be a positive number, got -0.1."),
    (dict(inner_lr=0), "inner_lr must be a positive number, got 0."),
    (dict(inner_lr=math.nan), "inner_lr must be a positive number, got nan."),
    (dict(meta_lr=math.nan), "meta_lr must be a positive number, got nan."),
    (dict(meta_lr=math.inf), "meta_lr must be a positive number, got inf."),
    (dict(meta_lr=-1e-3), "meta_lr must be a positive number, got -0.001."),
    (dict(meta_lr="0.001"), "meta_lr must be a positive number, got '0.001'."),
    (dict(algo="mamll"), "Unknown algorithm 'mamll'; choose one of maml, fomaml, reptile, anil, metasgd, protonet."),
    (dict(dataset="mnist"), "Unknown dataset 'mnist'; choose one of omniglot, sinusoid."),
    (dict(split="random"), "Unknown split 'random'; choose one of vinyals, lake."),
    (dict(train_part="test"), "Unknown train_part 'test'; choose one of train, trainval."),
    (dict(train_part="trainval"), "train_part='trainval' trains on the validation characters, so validating on them "
                                  "measures nothing; set val_every=0 (a final run) or train_part='train'"),
    (dict(k_shot=15, n_query=10), "k_shot + n_query = 25 but Omniglot has 20 drawings per character; "
                                  "keep k_shot + n_query <= 20."),
    (dict(k_shot=1, n_query=20), "k_shot + n_query = 21 but Omniglot has 20 drawings per character"),
])
def test_train_config_refuses(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes)


@pytest.mark.parametrize("changes, beyond", [
    (dict(k_shot=10, n_query=10), dict(k_shot=11, n_query=10)),  # exactly the 20 drawings, then one more
    (dict(dataset="sinusoid", k_shot=15, n_query=30), None),  # sinusoids have no limit on points
    (dict(inner_steps=0, val_every=0, eval_inner_steps=0), dict(inner_steps=-1)),
    (dict(n_way=1, k_shot=1, n_query=1, meta_batch_size=1, iterations=1), dict(meta_batch_size=0)),
    (dict(inner_lr=1e-12, meta_lr=1e-12), dict(meta_lr=0.0)),
    (dict(train_part="trainval", val_every=0), dict(train_part="trainval", val_every=1)),
])
def test_train_config_accepts_the_limits(changes, beyond):
    """A value at the limit is kept as given (not replaced by a default), and one step beyond it is refused."""
    config = TrainConfig(**changes)
    for name, value in changes.items():
        assert getattr(config, name) == value, name
    if beyond is not None:
        with pytest.raises(ValueError):
            TrainConfig(**beyond)


def test_train_config_fills_what_is_left_out_from_the_protocol_table():
    """n_way and k_shot come from the dataset's default cell, the rest from that cell's row (MAML 20-way: 16 tasks
    of 5 steps of 0.1, tested with 5 steps), and what is given is kept."""
    assert (TrainConfig().n_way, TrainConfig().k_shot) == (5, 1)
    assert TrainConfig(dataset="sinusoid").k_shot == 10
    config = TrainConfig(algo="maml", n_way=20, k_shot=1, inner_lr=0.05)
    assert (config.meta_batch_size, config.inner_steps, config.inner_lr, config.eval_inner_steps) == (16, 5, 0.05, 5)


def test_train_config_refuses_protonet_on_sinusoids():
    with pytest.raises(ValueError, match=r"protonet only classifies and cannot fit sinusoids; for dataset='sinusoid' "
                                         r"choose one of maml, fomaml, reptile, anil, metasgd\."):
        TrainConfig(algo="protonet", dataset="sinusoid")


@pytest.mark.parametrize("changes", [dict(inner_steps=1.5), dict(inner_steps="1"), dict(eval_inner_steps=0.5)])
def test_train_config_refuses_non_integer_step_counts(changes):
    name, value = next(iter(changes.items()))
    with pytest.raises(ValueError, match=re.escape(f"{name} must be 0 or more, got {value!r}")):
        TrainConfig(**changes)


def test_config_from_dict_refuses_unknown_keys():
    values = {**asdict(TrainConfig()), "nway": 5}
    with pytest.raises(ValueError, match=r"Unknown config keys \['nway'\]; known keys are \[.*'n_way'"):
        TrainConfig.from_dict(values)


def test_make_algorithm_refuses_unknown_names():
    with pytest.raises(ValueError, match=r"Unknown algorithm 'MAML'; choose one of maml, fomaml, reptile, anil, "
                                         r"metasgd, protonet\."):
        make_algorithm("MAML", Conv4(5))


@pytest.mark.parametrize("settings, message", [
    (dict(inner_lr=math.nan), "inner_lr must be a positive number, got nan."),
    (dict(inner_lr=-0.4), "inner_lr must be a positive number, got -0.4."),
    (dict(inner_steps=-1), "inner_steps must be 0 or more, got -1."),
])
@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_make_algorithm_refuses_bad_inner_loop_settings(name, settings, message):
    assert name in ALGORITHMS
    with pytest.raises(ValueError, match=re.escape(message)):
        make_algorithm(name, Conv4(5), **settings)


@pytest.fixture(scope="module")
def sinusoid_model():
    config = TrainConfig(dataset="sinusoid", inner_lr=0.01, k_shot=5, n_query=5)
    torch.manual_seed(0)
    algorithm = build_algorithm(config, build_model(config))
    return algorithm, algorithm.init_params(), task_source(config, "test", "cpu")


@pytest.mark.parametrize("tasks", [0, -3])
def test_evaluate_refuses_non_positive_task_counts(tasks, sinusoid_model):
    algorithm, params, sample = sinusoid_model
    with pytest.raises(ValueError, match=re.escape(f"tasks must be a positive integer, got {tasks}.")):
        evaluate(algorithm, params, sample, tasks=tasks, progress=False)


def test_evaluate_refuses_negative_inner_steps(sinusoid_model):
    algorithm, params, sample = sinusoid_model
    with pytest.raises(ValueError, match=re.escape("inner_steps must be 0 or more, got -1.")):
        evaluate(algorithm, params, sample, tasks=2, inner_steps=-1, progress=False)


def write_png(path: Path, light: bool = True) -> Path:
    image = Image.new("L", (28, 28), 255 if light else 0)
    image.paste(0 if light else 255, (10, 4, 16, 24))  # a stroke
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def folders(tmp_path):
    """support/ with 3 classes of 1 image each, query/ with 2 images."""
    for name in ("alpha", "beta", "gamma"):
        write_png(tmp_path / "support" / name / "1.png")
    write_png(tmp_path / "query" / "a.png")
    write_png(tmp_path / "query" / "b.png", light=False)
    return tmp_path


def test_good_folders_load(folders):
    x, y, names = load_support_folder(folders / "support")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2] and names == ["alpha", "beta", "gamma"]
    assert load_query_folder(folders / "query")[0].shape == (2, 1, 28, 28)


@pytest.mark.parametrize("damage, pattern", [
    ("missing", r"Support folder .*nowhere does not exist; make one sub-folder of images per class\."),
    ("one class", r"Support folder .*support has 1 class sub-folders; it needs at least 2\."),
    ("no classes", r"Support folder .*support has 0 class sub-folders; it needs at least 2\."),
    ("empty class", r"Class folder .*beta holds no images \(\.bmp, .*\.png"),
    ("unreadable image", r"Cannot read image .*beta[/\\]1\.png: .*Use PNG, JPEG or another format Pillow reads\."),
])
def test_bad_support_folders(damage, pattern, folders):
    support = folders / "support"
    if damage == "missing":
        support = folders / "nowhere"
    elif damage in ("one class", "no classes"):
        for name in (("beta", "gamma") if damage == "one class" else ("alpha", "beta", "gamma")):
            (support / name / "1.png").unlink()
            (support / name).rmdir()
        (support / "notes.txt").write_text("a file, not a class")
    elif damage == "empty class":
        (support / "beta" / "1.png").unlink()
        (support / "beta" / "readme.txt").write_text("not an image")
    else:
        (support / "beta" / "1.png").write_text("not really a PNG")
    with pytest.raises(ValueError, match=pattern):
        load_support_folder(support)


@pytest.mark.parametrize("damage", ["missing", "empty", "only non-images"])
def test_bad_query_folders(damage, folders):
    query = folders / "query"
    for f in query.iterdir():
        f.unlink()
    if damage == "missing":
        query.rmdir()
    elif damage == "only non-images":
        (query / "a.txt").write_text("text")
    with pytest.raises(ValueError, match=r"Query folder .*query holds no images; put the images to classify "
                                         r"directly in it\."):
        load_query_folder(query)


# Command line ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints (maml 5-way, protonet, sinusoid), image folders and data folders for the CLI cases."""
    root = tmp_path_factory.mktemp("bad_input")
    for algo in ("maml", "protonet"):
        config = TrainConfig(algo=algo, n_way=5, iterations=1)
        torch.manual_seed(0)
        algorithm = build_algorithm(config, build_model(config))
        torch.save({"version": CHECKPOINT_VERSION, "config": asdict(config), "iteration": 1,
                    "params": {k: v.detach() for k, v in algorithm.init_params().items()}, "optimizer": {},
                    "buffers": dict(algorithm.model.named_buffers())}, root / f"{algo}.pt")
    config = TrainConfig(dataset="sinusoid", iterations=1)
    params = build_algorithm(config, build_model(config)).init_params()
    torch.save({"version": CHECKPOINT_VERSION, "config": asdict(config), "iteration": 1,
                "params": {k: v.detach() for k, v in params.items()}, "optimizer": {}}, root / "sinusoid.pt")
    for name in ("alpha", "beta", "gamma"):
        write_png(root / "support3" / name / "1.png")
    write_png(root / "query" / "a.png")
    (root / "broken" / "alpha").mkdir(parents=True)
    (root / "broken" / "alpha" / "1.png").write_text("not really a PNG")
    write_png(root / "broken" / "beta" / "1.png")
    (root / "empty_data").mkdir()
    (root / "empty_cache").mkdir()
    (root / "corrupt_data").mkdir()
    for subset in ("images_background", "images_evaluation"):
        (root / "corrupt_data" / f"{subset}.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    return root


REAL_DATA = "real"  # the case needs Omniglot: keep this session's FASTADAPT_DATA / FASTADAPT_CACHE
# id: (arguments with {root} and {out}, FASTADAPT_DATA folder under root or REAL_DATA, message regex)
SUBPROCESS_CASES = {  # tests/test_cli.py runs the config, argparse, checkpoint and image-folder cases
    "train missing archives": (["train", "--iterations", "1"], "empty_data",
                               r"Omniglot not found in .*empty_data \(from FASTADAPT_DATA\): it needs "
                               r"images_background\.zip and images_evaluation\.zip"),
    "train more ways than classes": (["train", "--algo", "protonet", "--n-way", "5000", "--iterations", "1",
                                      "--val-every", "0"], REAL_DATA,
                                     r"n_way=5000 but only 4112 classes are available; choose n_way <= 4112\."),
    "classify wrong number of classes": (["classify", "--checkpoint", "{root}/maml.pt", "--support",
                                          "{root}/support3", "--query", "{root}/query"], "empty_data",
                                         r"The support folder has 3 classes but this maml model is 5-way; give "
                                         r"exactly 5 class folders, or use a protonet checkpoint"),
}


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastadapt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_results(files, tmp_path_factory):
    """Run every SUBPROCESS_CASES entry as a real `python -m fastadapt` process, 2 at a time."""
    outs = tmp_path_factory.mktemp("cli_out")

    def one(item):
        index, (case, (args, data, _)) = item
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        if data != REAL_DATA:  # never touch the real data or cache, never download
            env.update(FASTADAPT_DATA=str(files / data), FASTADAPT_CACHE=str(files / "empty_cache"))
        args = [a.format(root=files) for a in args]
        if args[0] == "train":
            args += ["--device", "cpu", "--out", str(outs / f"run{index}")]
        else:
            args += ["--device", "cpu"]
        return case, run_cli(args, env)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(one, enumerate(SUBPROCESS_CASES.items())))
    return results


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_cli_bad_input_is_one_error_line(case, cli_results, files):
    result = cli_results[case]
    pattern = SUBPROCESS_CASES[case][2]
    assert result.returncode == 2, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error:") or errors[0].startswith("python -m fastadapt"), errors[0]
    assert re.search(pattern, errors[0]), f"{pattern!r} not in {errors[0]!r}"
    assert result.stdout == ""


def test_cli_bad_input_never_touched_the_cache(cli_results, files):
    assert list((files / "empty_cache").iterdir()) == []


def main_error(argv: list[str], capsys) -> str:
    """main(argv) must exit with status 2 and one `error:` line; returns that line."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--n-way", "0"], "error: n_way must be a positive integer, got 0."),
    (["--meta-batch-size", "-4"], "error: meta_batch_size must be a positive integer, got -4."),
    (["--iterations", "0"], "error: iterations must be a positive integer, got 0."),
    (["--k-shot", "0"], "error: k_shot must be a positive integer, got 0."),
    (["--n-query", "-1"], "error: n_query must be a positive integer, got -1."),
    (["--inner-lr", "-0.1"], "error: inner_lr must be a positive number, got -0.1."),
    (["--meta-lr", "inf"], "error: meta_lr must be a positive number, got inf."),
    (["--meta-lr", "nan"], "error: meta_lr must be a positive number, got nan."),
    (["--k-shot", "15", "--n-query", "10"], "error: k_shot + n_query = 25 but Omniglot has 20 drawings per "
                                            "character; keep k_shot + n_query <= 20."),
    (["--inner-steps", "-1"], "error: inner_steps must be 0 or more, got -1."),
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    (["--split", "random"], "argument --split: invalid choice: 'random'"),
    (["--n-way", "two"], "argument --n-way: invalid int value: 'two'"),
])
def test_cli_train_settings_in_process(args, message, tmp_path, capsys):
    line = main_error(["train", *args, "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert message in line
    assert not (tmp_path / "run").exists(), "nothing is written for a refused configuration"


@pytest.mark.parametrize("data, args, message", [
    ("corrupt_data", ["--algo", "protonet"], "images_background.zip is not a readable zip archive"),
    (REAL_DATA, ["--split", "lake", "--n-way", "1000"],
     "error: n_way=1000 but only 813 classes are available; choose n_way <= 813."),
])
def test_cli_train_data_problems_in_process(data, args, message, files, tmp_path, monkeypatch, capsys):
    if data != REAL_DATA:
        monkeypatch.setenv("FASTADAPT_DATA", str(files / data))
        monkeypatch.setenv("FASTADAPT_CACHE", str(files / "empty_cache"))
    line = main_error(["train", *args, "--iterations", "1", "--val-every", "0", "--device", "cpu",
                       "--out", str(tmp_path / "run")], capsys)
    assert message in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_train_refuses_an_existing_run_without_resume(files, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes((files / "maml.pt").read_bytes())
    line = main_error(["train", "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert "checkpoint.pt exists; pass resume=True (--resume) to continue it or use another folder." in line


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{root}/sinusoid.pt", "--tasks", "0"], "tasks must be a positive integer, got 0."),
    (["--checkpoint", "{root}/sinusoid.pt", "--tasks", "-1"], "tasks must be a positive integer, got -1."),
])
def test_cli_evaluate_in_process(args, message, files, capsys):
    assert message in main_error(["evaluate", *[a.format(root=files) for a in args], "--device", "cpu"], capsys)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{root}/protonet.pt", "--support", "{root}/nowhere", "--query", "{root}/query"],
     "Support folder {root}/nowhere does not exist"),
    (["--checkpoint", "{root}/protonet.pt", "--support", "{root}/support3", "--query", "{root}/nowhere"],
     "Query folder {root}/nowhere holds no images"),
    (["--checkpoint", "{root}/sinusoid.pt", "--support", "{root}/support3", "--query", "{root}/query"],
     "is a sinusoid model; classify needs an Omniglot image model."),
    (["--checkpoint", "{root}/protonet.pt", "--support", "{root}/broken", "--query", "{root}/query"],
     "Cannot read image {root}/broken/alpha/1.png"),
])
def test_cli_classify_in_process(args, message, files, capsys):
    line = main_error(["classify", *[a.format(root=files) for a in args], "--device", "cpu"], capsys)
    assert message.format(root=files) in line


def test_cli_classify_protonet_takes_any_number_of_classes(files, capsys):
    """The positive control of the wrong-number-of-classes case: a protonet model classifies with 3 classes."""
    cli.main(["classify", "--checkpoint", str(files / "protonet.pt"), "--support", str(files / "support3"),
              "--query", str(files / "query"), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and '"label": ' in lines[0]
