"""The command line, end to end, in subprocesses: train, --resume, evaluate, classify, and bad input.

Starting Python and importing torch is the slow part on a small machine, so one module fixture starts
the commands together (the error cases next to the training run) and each test checks its own result.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt import TrainConfig, load_checkpoint, train
from fastadapt.data import omniglot_classes
from fastadapt.evaluate import predict_queries
from fastadapt.images import load_image, load_query_folder, load_support_folder

TIMEOUT = 240
PROTONET = ["--algo", "protonet", "--meta-batch-size", "4", "--n-query", "1", "--meta-lr", "0.003",
            "--val-every", "0", "--log-every", "5", "--checkpoint-every", "5", "--device", "cpu"]
TRAINED_ITERATIONS, RESUMED_ITERATIONS = 10, 20
CLASSES = [7, 77, 177, 277, 377]  # characters of the vinyals test split
# (drawer, dark strokes on light like the original Omniglot files, saved size)
SUPPORT = [(0, False, 28), (1, True, 28), (2, True, 64), (3, False, 64), (4, False, 28)]
QUERY = [(10, True, 64), (11, False, 28), (12, True, 28), (13, False, 64)]


def environment() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # small models on a shared CPU: one thread each
    return env


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastadapt", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment())


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def save_png(image: np.ndarray, path: Path, invert: bool = False, size: int = 28) -> None:
    """Save a (28, 28) uint8 Omniglot image (bright strokes); optionally dark-on-light and/or resized."""
    picture = Image.fromarray(255 - image if invert else image, mode="L")
    if size != 28:
        picture = picture.resize((size, size), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def class_name(index: int) -> str:
    return f"class{index}"


def make_folders(omniglot, root: Path) -> dict:
    """support/<class>/*.png (5 drawers) and query/*.png (4 per class), in both polarities and two sizes."""
    images = omniglot_classes("vinyals", "test", rotations=False, data=omniglot)[:, :, 0].numpy()  # (423, 20, 28, 28)
    support, query = root / "support", root / "query"
    expected = {}
    for c in CLASSES:
        name = class_name(c)
        for drawer, invert, size in SUPPORT:
            save_png(images[c, drawer], support / name / f"{drawer}.png", invert=invert, size=size)
        for drawer, invert, size in QUERY:
            save_png(images[c, drawer], query / f"{name}_{drawer}.png", invert=invert, size=size)
            expected[f"{name}_{drawer}.png"] = name
    (query / "notes.txt").write_text("not an image, ignored\n")
    return {"support": support, "query": query, "expected": expected, "images": images}



@pytest.fixture(scope="module")
def runs(omniglot, tmp_path_factory):
    """Run every command of this module, concurrently where they do not depend on each other."""
    root = tmp_path_factory.mktemp("cli")
    folders = make_folders(omniglot, root / "images")

    # inputs for the error cases
    maml_dir = root / "maml"
    train(TrainConfig(algo="maml", iterations=1, meta_batch_size=1, n_query=1, val_every=0), maml_dir,
          device="cpu", progress=False, data=omniglot)
    damaged = root / "damaged.pt"
    damaged.write_bytes(np.random.default_rng(0).bytes(4096))
    empty_class = root / "empty_class"
    shutil.copytree(folders["support"], empty_class)
    for f in (empty_class / class_name(CLASSES[0])).iterdir():
        f.unlink()
    broken_query = root / "broken_query"
    broken_query.mkdir()
    (broken_query / "broken.png").write_text("this is not a PNG file\n")
    good_query = str(folders["query"])

    trained, uninterrupted = root / "trained", root / "uninterrupted"
    commands = {
        "train": ["train", *PROTONET, "--iterations", str(TRAINED_ITERATIONS), "--out", str(trained)],
        "bad_algo": ["train", "--algo", "bogus", "--out", str(root / "x1")],
        "bad_n_way": ["train", "--n-way", "0", "--out", str(root / "x2")],
        "too_many_drawers": ["train", "--k-shot", "15", "--n-query", "10", "--out", str(root / "x3")],
        "missing_checkpoint": ["evaluate", "--checkpoint", str(root / "nowhere" / "checkpoint.pt"), "--device", "cpu"],
        "damaged_checkpoint": ["evaluate", "--checkpoint", str(damaged), "--device", "cpu"],
        "n_way_mismatch": ["evaluate", "--checkpoint", str(maml_dir / "checkpoint.pt"), "--n-way", "20",
                           "--tasks", "5", "--device", "cpu"],
        "evaluate_n_way_0": ["evaluate", "--checkpoint", str(maml_dir / "checkpoint.pt"), "--n-way", "0",
                             "--tasks", "5", "--device", "cpu"],
        "empty_class": ["classify", "--checkpoint", str(maml_dir / "checkpoint.pt"), "--support", str(empty_class),
                        "--query", good_query, "--device", "cpu"],
        "unreadable_image": ["classify", "--checkpoint", str(maml_dir / "checkpoint.pt"),
                             "--support", str(folders["support"]), "--query", str(broken_query), "--device", "cpu"],
    }
    results, times = {}, {}
    running = {name: (start(*args), time.perf_counter()) for name, args in commands.items()}

    def collect(name):
        process, started = running.pop(name)
        results[name] = finish(process)
        times[name] = time.perf_counter() - started

    collect("train")
    resumed = root / "resumed"
    checkpoint = str(trained / "checkpoint.pt")
    later = {
        "resume": ["train", *PROTONET, "--iterations", str(RESUMED_ITERATIONS), "--out", str(resumed), "--resume"],
        "evaluate": ["evaluate", "--checkpoint", checkpoint, "--tasks", "20", "--n-way", "10", "--k-shot", "2",
                     "--n-query", "2", "--device", "cpu"],
        "classify": ["classify", "--checkpoint", checkpoint, "--support", str(folders["support"]),
                     "--query", good_query, "--device", "cpu"],
    }
    if results["train"].returncode == 0:  # else test_train_writes_... reports it, and the rest has nothing to use
        shutil.copytree(trained, resumed)
        for name, args in later.items():
            running[name] = (start(*args), time.perf_counter())
    # meanwhile, here: the uninterrupted run that train + resume must reproduce
    started = time.perf_counter()
    train(TrainConfig(algo="protonet", meta_batch_size=4, n_query=1, meta_lr=0.003, inner_steps=0, val_every=0,
                      log_every=5, checkpoint_every=5, iterations=RESUMED_ITERATIONS),
          uninterrupted, device="cpu", progress=False, data=omniglot)
    times["uninterrupted (in-process)"] = time.perf_counter() - started
    for name in list(running):
        collect(name)
    print({k: round(v, 1) for k, v in times.items()})
    return dict(results=results, root=root, folders=folders, trained=trained, resumed=resumed,
                uninterrupted=uninterrupted, maml_dir=maml_dir)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- train, resume, evaluate, classify

def test_train_writes_checkpoint_metrics_and_config(runs):
    result, out = runs["results"]["train"], runs["trained"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(lines(result.stdout)[-1]) == {"out": str(out), "iterations": TRAINED_ITERATIONS}
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["algo"], config["iterations"], config["meta_batch_size"], config["n_query"]) == (
        "protonet", TRAINED_ITERATIONS, 4, 1)
    assert config["meta_lr"] == pytest.approx(0.003) and config["inner_steps"] == 0
    records = [json.loads(line) for line in lines((out / "metrics.jsonl").read_text())]
    assert [r["iteration"] for r in records] == [5, 10]
    assert all({"loss", "accuracy", "time_s"} <= set(r) for r in records)
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    assert blob["iteration"] == TRAINED_ITERATIONS and blob["config"] == config


def test_resume_continues_from_the_checkpoint(runs):
    result, out = runs["results"].get("resume"), runs["resumed"]
    assert result is not None, "the train command failed"
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(lines(result.stdout)[-1])["iterations"] == RESUMED_ITERATIONS
    before = lines((runs["trained"] / "metrics.jsonl").read_text())
    after = lines((out / "metrics.jsonl").read_text())
    assert [json.loads(line)["iteration"] for line in after] == [5, 10, 15, 20]
    assert after[:2] == before  # the saved part of the log is kept as it was, not rewritten
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    assert blob["iteration"] == RESUMED_ITERATIONS
    # 10 + 10 resumed iterations give the same weights as 20 uninterrupted ones
    reference = torch.load(runs["uninterrupted"] / "checkpoint.pt", weights_only=True)
    start = torch.load(runs["trained"] / "checkpoint.pt", weights_only=True)
    for k, p in reference["params"].items():
        torch.testing.assert_close(blob["params"][k], p, rtol=1e-4, atol=1e-5)
        assert not torch.equal(start["params"][k], p) or k.endswith("bias")


def test_evaluate_prints_one_json_object(runs):
    result = runs["results"].get("evaluate")
    assert result is not None, "the train command failed"
    assert result.returncode == 0, result.stderr[-3000:]
    out = lines(result.stdout)
    assert len(out) == 1
    record = json.loads(out[0])
    assert {"accuracy", "ci95", "tasks", "n_way", "k_shot"} <= set(record)
    assert (record["tasks"], record["n_way"], record["k_shot"]) == (20, 10, 2)
    assert 0.1 < record["accuracy"] <= 1 and 0 < record["ci95"] < 0.5


def test_classify_prints_a_label_per_query_image(runs):
    result, folders = runs["results"].get("classify"), runs["folders"]
    assert result is not None, "the train command failed"
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in lines(result.stdout)]
    expected = folders["expected"]
    assert [Path(r["file"]).name for r in records] == sorted(expected)  # one line per image, notes.txt skipped
    assert all(set(r) == {"file", "label"} and r["label"] in set(expected.values()) for r in records)
    correct = sum(r["label"] == expected[Path(r["file"]).name] for r in records)
    assert correct >= 16, records  # measured: 18 or 19 of these 20 (protonets trained 1 to 60 iterations)
    # and exactly what the model predicts in-process for the same files
    _, algorithm, params = load_checkpoint(runs["trained"] / "checkpoint.pt", "cpu")
    x_support, y_support, names = load_support_folder(folders["support"])
    x_query, files = load_query_folder(folders["query"])
    with torch.no_grad():
        logits = predict_queries(algorithm, params, x_support, y_support, x_query)  # (20, 5)
    assert [{"file": str(f), "label": names[i]} for f, i in zip(files, logits.argmax(-1).tolist())] == records
    # the default classifies each query with the support set only: one query alone gets the same answer
    alone = predict_queries(algorithm, params, x_support, y_support, x_query[:1])  # (1, 5)
    torch.testing.assert_close(alone[0], logits[0], rtol=1e-4, atol=1e-4)


def test_images_are_converted_to_omniglot_polarity_and_size(runs):
    folders = runs["folders"]
    c = CLASSES[0]
    for drawer, invert, size in SUPPORT:
        original = torch.from_numpy(folders["images"][c, drawer]).float() / 255  # (28, 28)
        loaded = load_image(folders["support"] / class_name(c) / f"{drawer}.png")
        assert loaded.shape == (1, 28, 28) and loaded.dtype == torch.float32
        if size == 28:  # exact up to rounding, whichever the polarity
            torch.testing.assert_close(loaded[0], original, atol=1.5 / 255, rtol=0)
        else:  # 28 -> 64 -> 28
            assert (loaded[0] - original).abs().mean() < 0.05
        assert loaded[0, 0].mean() < 0.2  # dark background, bright strokes


# ---------------------------------------------------------------- bad input: exit 2, one line, no traceback

def assert_clean_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    message = lines(result.stderr)
    assert len(message) == 1 and message[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in message[0], message[0]


def test_unknown_algorithm(runs):
    result = runs["results"]["bad_algo"]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # argparse prints its usage, then one "... error: argument --algo: invalid choice: 'bogus'" line
    assert "error:" in lines(result.stderr)[-1] and "invalid choice: 'bogus'" in lines(result.stderr)[-1]


@pytest.mark.parametrize("case, fragments", [
    ("bad_n_way", ["n_way", "0"]),
    ("too_many_drawers", ["25", "20 drawings"]),
    ("missing_checkpoint", ["No checkpoint"]),
    ("damaged_checkpoint", ["damaged"]),
    ("n_way_mismatch", ["--n-way 20", "5-way"]),
    ("empty_class", ["holds no images"]),
    ("unreadable_image", ["Cannot read image", "broken.png"]),
])
def test_bad_input_exits_2_with_one_line(runs, case, fragments):
    assert_clean_error(runs["results"][case], *fragments)


def test_damaged_checkpoint_exits_2_without_traceback(runs):
    result = runs["results"]["damaged_checkpoint"]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines(result.stderr)[0].startswith("error: Checkpoint ") and "is damaged" in lines(result.stderr)[0]


def test_evaluate_n_way_zero_is_refused(runs):
    assert_clean_error(runs["results"]["evaluate_n_way_0"], "n_way")
