"""The hyperparameter table against the published values, typed here from the papers and their public code,
and the one-table rule: TrainConfig, the command line and protocol_config all read the same rows."""
from __future__ import annotations

import json

import pytest

from fastadapt import PROTOCOLS, TrainConfig, cli, protocol, protocol_config

# (n_way, k_shot): (meta-batch, inner steps, inner rate, test steps), Finn et al. 2017 appendix A.1
MAML_PAPER = {(5, 1): (32, 1, 0.4, 3), (5, 5): (32, 1, 0.4, 3), (20, 1): (16, 5, 0.1, 5), (20, 5): (16, 5, 0.1, 5)}
# n_way: (--inner-iters, --meta-batch, --meta-iters, --eval-iters, --train-shots, --inner-batch, --learning-rate,
# --eval-batch), openai/supervised-reptile README at its last commit (5d5589c, the archived head)
REPTILE_README = {5: (5, 5, 100_000, 50, 10, 10, 0.001, 5), 20: (10, 5, 200_000, 50, 10, 20, 0.0005, 10)}
# (n_way, k_shot): (non-transductive, transductive) accuracy in %, Nichol et al. 2018, Table 1
REPTILE_PAPER = {(5, 1): (95.39, 97.68), (5, 5): (98.90, 99.48), (20, 1): (88.14, 89.43), (20, 5): (96.65, 97.12)}


@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "metasgd"])
@pytest.mark.parametrize("cell", list(MAML_PAPER))
def test_maml_rows_are_the_papers(algo, cell):
    row = PROTOCOLS[("omniglot", algo, *cell)]
    assert (row.meta_batch_size, row.inner_steps, row.inner_lr, row.eval_inner_steps) == MAML_PAPER[cell]
    assert (row.meta_lr, row.iterations, row.n_query, row.test_queries, row.test_tasks) == (1e-3, 60_000, cell[1],
                                                                                           cell[1], 600)


@pytest.mark.parametrize("cell", list(MAML_PAPER))
def test_reptile_rows_are_the_readmes(cell):
    row = PROTOCOLS[("omniglot", "reptile", *cell)]
    steps, batch, iterations, eval_steps, shots, inner_batch, rate, eval_batch = REPTILE_README[cell[0]]
    assert (row.inner_steps, row.meta_batch_size, row.iterations, row.eval_inner_steps, row.train_shots) == (
        steps, batch, iterations, eval_steps, shots)
    assert (row.inner_optimizer, row.inner_batch, row.inner_lr, row.eval_inner_batch) == (
        "adam", inner_batch, rate, eval_batch)
    assert (row.meta_lr, row.test_queries, row.test_tasks) == (1.0, 1, 10_000)
    published = {p.transductive: round(100 * p.accuracy, 2) for p in row.papers}
    assert (published[False], published[True]) == REPTILE_PAPER[cell]
    assert row.paper.transductive is row.transductive is True  # the headline number is the transductive one


@pytest.mark.parametrize("cell", list(MAML_PAPER))
def test_protonet_rows_are_the_papers_code(cell):
    row = PROTOCOLS[("omniglot", "protonet", *cell)]
    assert (row.train_ways, row.n_query, row.meta_lr, row.test_queries, row.test_tasks) == (60, 5, 1e-3, 15, 1_000)
    assert (row.inner_steps, row.eval_inner_steps, row.transductive) == (0, 0, False)
    # run_train.py: data.test_way 5, data.test_query 15, data.test_episodes 100 per epoch of data.train_episodes 100,
    # train.epochs 10,000, train.patience 200
    assert (row.val_n_way, row.val_n_query, row.val_tasks, row.val_every, row.iterations, row.patience) == (
        5, 15, 100, 100, 10_000 * 100, 200)


def test_every_row_names_its_source():
    for key, row in PROTOCOLS.items():
        assert len(row.source) > 40 and any(name in row.source for name in ("Finn", "Nichol", "Snell")), key


def test_settings_no_paper_ran_take_the_nearest_cell():
    assert protocol("omniglot", "maml", 10, 2) is PROTOCOLS[("omniglot", "maml", 5, 1)]
    assert protocol("omniglot", "maml", 15, 4) is PROTOCOLS[("omniglot", "maml", 20, 5)]
    with pytest.raises(ValueError, match=r"No protocol for protonet on sinusoid; the table has .*maml on omniglot"):
        protocol("sinusoid", "protonet", 1, 10)


def test_protocol_config_is_the_final_run_of_a_cell():
    """Trains on trainval, unvalidated, with the paper's training tasks (ProtoNets: 60 ways, Reptile: 10 shots)."""
    protonet = protocol_config("omniglot", "protonet", 5, 1)
    assert (protonet.n_way, protonet.k_shot, protonet.n_query, protonet.meta_batch_size) == (60, 1, 5, 1)
    # ProtoNets select on validation (train.py), then train again on trainval (trainval.py)
    assert (protonet.train_part, protonet.val_every, protonet.patience, protonet.retrain) == ("train", 100, 200, True)
    assert (protonet.val_n_way, protonet.val_n_query) == (5, 15)
    maml = protocol_config("omniglot", "maml", 5, 1)
    assert (maml.train_part, maml.val_every, maml.patience, maml.retrain) == ("trainval", 0, 0, False)
    reptile = protocol_config("omniglot", "reptile", 20, 1, iterations=10)
    assert (reptile.n_way, reptile.k_shot, reptile.inner_steps, reptile.iterations) == (20, 10, 10, 10)
    with pytest.raises(ValueError, match=r"No published 10-way 1-shot cell for maml on omniglot; the table has "
                                         r"20-way 1-shot, 20-way 5-shot, 5-way 1-shot, 5-way 5-shot\."):
        protocol_config("omniglot", "maml", 10, 1)


def test_the_command_line_takes_its_defaults_from_the_table(tmp_path, monkeypatch, capsys):
    """`train` with only the cell given writes a config.json whose settings are the row's (no training: the run is
    stopped before its first step)."""
    from fastadapt import training

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "meta_step", stop)
    with pytest.raises(SystemExit):
        cli.main(["train", "--n-way", "20", "--k-shot", "5", "--device", "cpu", "--val-every", "0",
                  "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "config.json").read_text())
    row = PROTOCOLS[("omniglot", "maml", 20, 5)]
    for name in ("n_query", "meta_batch_size", "inner_steps", "inner_lr", "meta_lr", "iterations", "eval_inner_steps"):
        assert saved[name] == getattr(row, name) == getattr(TrainConfig(n_way=20, k_shot=5), name), name


# Published accuracies in %, each read from its paper's table (see fastadapt.protocols.PAPERS for the sources)
# (5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot); None: no verified number
PAPER = {"maml": (98.7, 99.9, 95.8, 98.9), "fomaml": (98.3, 99.2, 89.4, 97.9), "protonet": (98.8, 99.7, 96.0, 98.9),
         "metasgd": (99.53, 99.93, None, None), "anil": (None, None, None, None)}


@pytest.mark.parametrize("algo", list(PAPER))
def test_the_table_carries_the_published_accuracies(algo):
    for cell, published in zip(MAML_PAPER, PAPER[algo]):
        row = PROTOCOLS[("omniglot", algo, *cell)]
        if published is None:
            assert row.paper is None
        else:
            assert round(100 * row.paper.accuracy, 2) == published and row.paper.source
