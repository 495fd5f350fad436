"""The one hyperparameter table: a row per (dataset, algorithm, n_way, k_shot) cell, with its source.

TrainConfig's defaults, the command line and scripts/reproduce.py all read these rows, so a setting
is written once. Each row says how the cell was trained and tested in its paper's public code, and
where this package departs from it. Read a row with protocol("omniglot", "maml", 5, 1).
"""
from __future__ import annotations

from dataclasses import dataclass

CELLS = [(5, 1), (5, 5), (20, 1), (20, 5)]  # (n_way, k_shot) of the Omniglot table
DEFAULT_CELLS = {"omniglot": (5, 1), "sinusoid": (1, 10)}  # the cell a config without n_way / k_shot gets


@dataclass(frozen=True)
class Paper:
    """A published accuracy of one cell, with its 95% interval (None when the paper gives none) and where it is."""

    accuracy: float  # a fraction, 0.987 for 98.7%
    ci95: float | None
    source: str
    transductive: bool = True  # True: every query of a test task in one batch (BatchNorm sees them together)


@dataclass(frozen=True)
class Protocol:
    """How one cell was meta-trained and tested (book notation in the comments)."""

    n_query: int  # Q: query examples per class (sinusoids: per task) in a training task
    meta_batch_size: int  # B: tasks per meta-iteration
    inner_steps: int  # m: inner steps in training
    inner_lr: float  # alpha (Reptile: the inner Adam's step size)
    meta_lr: float  # beta (Reptile's epsilon, annealed to 0 by the algorithm's schedule)
    iterations: int  # T: meta-iterations (ProtoNets: the most the model-selection run may take)
    eval_inner_steps: int  # inner steps at test time
    test_tasks: int  # n: test tasks behind the published mean
    test_queries: int  # query examples per class of a test task
    transductive: bool  # True: the published number classified all of a task's queries in one batch
    source: str  # the paper and the public code the values were read from
    differs: str = ""  # where this package departs from the source, and why
    train_ways: int | None = None  # ways of a training task, when not the cell's (ProtoNets: 60)
    train_shots: int | None = None  # shots of a training task, when not the cell's (Reptile: 10)
    inner_optimizer: str = "sgd"  # the inner loop's optimizer: "sgd", or "adam" (Reptile: Adam with beta1 = 0)
    inner_batch: int = 0  # images per inner step, mini-batches cycling through the support set (0: all of it)
    eval_inner_batch: int = 0  # the same at test time
    val_n_way: int = 0  # ways of a validation task (0: the training tasks')
    val_n_query: int = 0  # query examples per class of a validation task (0: the training tasks')
    val_every: int = 0  # meta-iterations between validations in model selection (0: the paper selects nothing)
    val_tasks: int = 100  # validation tasks per validation point
    patience: int = 0  # validation points without a lower validation loss before model selection stops
    papers: tuple[Paper, ...] = ()  # the published accuracies of this cell (Reptile: non-transductive, transductive)

    @property
    def paper(self) -> Paper | None:
        """The headline published number: the one measured the way this protocol tests (transductive or not)."""
        same = [p for p in self.papers if p.transductive == self.transductive]
        return (same or list(self.papers) or [None])[0]


MAML_SOURCE = ("Finn et al. 2017, appendix A.1 (inner steps and rate, meta-batch, test steps); "
               "cbfinn/maml main.py (usage lines: 60,000 iterations, meta-batch 32 / 16, update_lr 0.4 / 0.1, "
               "num_updates 1 / 5; Adam 1e-3; 600 test tasks) and data_generator.py (K query examples per class: "
               "each class gets 2K examples, split in half)")
MAML_DIFFERS = ("main.py tests with 10 inner steps (test_num_updates, every step printed); the paper's 3 (5-way) or "
                "5 (20-way) test steps are used. cbfinn/maml meta-trains on 1,100 characters of a seeded shuffle and "
                "validates on 100; here the published Vinyals lists (trainval, no model selection)")
FINN = "Finn et al. 2017, Table 1 (Omniglot, MAML)"
NICHOL = "Nichol et al. 2018 (On First-Order Meta-Learning Algorithms), Table 1 (Omniglot)"
# (algorithm, n_way, k_shot): published accuracies. Each number was checked against a copy of its paper's table
# (searched, not typed from memory): MAML's Table 1 row "MAML (ours)" in an HTML rendering of the paper; Nichol et
# al.'s Omniglot table (MAML + Transduction, 1st-order MAML + Transduction, Reptile, Reptile + Transduction) as
# transcribed in two public repositories; Snell et al.'s Table 1 (no intervals) in a README that cites it; Meta-SGD's
# 5-way numbers in T-NAS's Table 2, which cites Li et al. Meta-SGD's 20-way numbers and any ANIL Omniglot numbers
# could not be found in a readable copy, so they are left out.
PAPERS = {
    **{("maml", *cell): (Paper(acc, ci, FINN),) for cell, acc, ci in
       (((5, 1), 0.987, 0.004), ((5, 5), 0.999, 0.001), ((20, 1), 0.958, 0.003), ((20, 5), 0.989, 0.002))},
    **{("fomaml", *cell): (Paper(acc, ci, NICHOL + ", 1st-order MAML + Transduction"),) for cell, acc, ci in
       (((5, 1), 0.983, 0.005), ((5, 5), 0.992, 0.002), ((20, 1), 0.894, 0.005), ((20, 5), 0.979, 0.001))},
    **{("reptile", *cell): (Paper(plain, plain_ci, NICHOL + ", Reptile (non-transductive)", transductive=False),
                            Paper(trans, trans_ci, NICHOL + ", Reptile + Transduction"))
       for cell, plain, plain_ci, trans, trans_ci in
       (((5, 1), 0.9539, 0.0009, 0.9768, 0.0004), ((5, 5), 0.9890, 0.0010, 0.9948, 0.0006),
        ((20, 1), 0.8814, 0.0015, 0.8943, 0.0014), ((20, 5), 0.9665, 0.0033, 0.9712, 0.0032))},
    **{("protonet", *cell): (Paper(acc, None, "Snell et al. 2017, Table 1 (Omniglot, Prototypical Networks, "
                                             "Euclidean distance; no intervals given)", transductive=False),)
       for cell, acc in (((5, 1), 0.988), ((5, 5), 0.997), ((20, 1), 0.960), ((20, 5), 0.989))},
    **{("metasgd", *cell): (Paper(acc, ci, "Li et al. 2017 (Meta-SGD), Omniglot 5-way table"),) for cell, acc, ci in
       (((5, 1), 0.9953, 0.0026), ((5, 5), 0.9993, 0.0009))},
}


def maml(n_way: int, k_shot: int, name: str) -> Protocol:
    """MAML's Omniglot protocol, also applied to first-order MAML, ANIL and Meta-SGD."""
    five = n_way == 5
    applied = {
        "maml": "",
        "fomaml": " Finn et al. report first-order MAML on MiniImagenet only; MAML's Omniglot protocol is applied "
                  "(the published Omniglot numbers are Nichol et al.'s table, transductive).",
        "anil": " MAML's protocol applied to ANIL (not checked against Raghu et al. 2020's own settings).",
        "metasgd": " MAML's protocol applied to Meta-SGD (not checked against Li et al. 2017's own settings); "
                   "the learned rates start at inner_lr.",
    }[name]
    return Protocol(n_query=k_shot, meta_batch_size=32 if five else 16, inner_steps=1 if five else 5,
                    inner_lr=0.4 if five else 0.1, meta_lr=1e-3, iterations=60_000, eval_inner_steps=3 if five else 5,
                    test_tasks=600, test_queries=k_shot, transductive=True, source=MAML_SOURCE,
                    differs=MAML_DIFFERS + "." + applied, papers=PAPERS.get((name, n_way, k_shot), ()))


def reptile(n_way: int, k_shot: int) -> Protocol:
    """Reptile's Omniglot commands (openai/supervised-reptile README at its last commit): 1 and 5 shots alike."""
    five = n_way == 5
    batch, steps, rate, eval_batch = (10, 5, 0.001, 5) if five else (20, 10, 0.0005, 10)
    return Protocol(
        n_query=1, meta_batch_size=5, inner_steps=steps, inner_lr=rate, meta_lr=1.0,
        iterations=100_000 if five else 200_000, eval_inner_steps=50, test_tasks=10_000, test_queries=1,
        transductive=True, train_shots=10, inner_optimizer="adam", inner_batch=batch,
        eval_inner_batch=eval_batch,
        source=("Nichol et al. 2018; openai/supervised-reptile README (commit 5d5589c, the archived head), "
                f"Omniglot {n_way}-way {k_shot}-shot command: --train-shots 10 --inner-batch {batch} --inner-iters "
                f"{steps} --learning-rate {rate} --meta-step 1 --meta-step-final 0 --meta-batch 5 --meta-iters "
                f"{100_000 if five else 200_000} --eval-batch {eval_batch} --eval-iters 50"
                + (" --transductive" if (n_way, k_shot) == (5, 1) else "") +
                "; models.py: Adam with beta1 = 0 in the inner loop; reptile.py: mini-batches cycle through the "
                "task's reshuffled images, 1 query per class, transductive = the N queries in one batch, "
                "non-transductive = support set plus one query; args.py: 10,000 test tasks (--eval-samples)"),
        differs=("The inner Adam's state (second moments and step count) carries over from task to task and from "
                 "meta-iteration to meta-iteration, as in the code (only the weights are reset per task); the "
                 "code's epsilon is TensorFlow's (added to sqrt(v) before bias correction), here PyTorch's. "
                 "Test tasks are drawn from the Vinyals test characters with rotations; the code tests on the 423 "
                 "unrotated characters of its own seeded split. The headline number is the transductive one (the "
                 "setting of MAML's numbers); the runner reports the non-transductive one beside it, as the paper "
                 "does"),
        papers=PAPERS[("reptile", n_way, k_shot)],
    )


def protonet(n_way: int, k_shot: int) -> Protocol:
    """Prototypical Networks' Omniglot protocol: 60-way training episodes whatever the test cell."""
    return Protocol(
        n_query=5, meta_batch_size=1, inner_steps=0, inner_lr=0.4, meta_lr=1e-3, iterations=1_000_000,
        eval_inner_steps=0, test_tasks=1_000, test_queries=15, transductive=False, train_ways=60,
        val_n_way=5, val_n_query=15, val_every=100, val_tasks=100, patience=200,
        source=("Snell et al. 2017; jakesnell/prototypical-networks scripts/train/few_shot/run_train.py (60-way "
                "episodes with K shots and 5 queries per class, epochs of 100 episodes, at most 10,000 epochs, Adam "
                "1e-3 halved every 20 epochs, validation on 100 5-way episodes with 15 queries after every epoch, "
                "patience 200 epochs), train.py (the best model by validation loss; stop once 200 epochs pass "
                "without a lower one), trainval.py (train again on trainval for best epoch + 200 epochs), "
                "protonets/models/few_shot.py (nn.BatchNorm2d), protonets/utils/model.py (evaluation in eval()) and "
                "scripts/predict/few_shot/eval.py (1,000 test episodes with the run's data.test_query = 15)"),
        differs=("The same 100 validation tasks at every validation point, where the code draws new ones each "
                 "epoch. The trainval run is as long as in trainval.py: (best epoch - 1) + 200 epochs. inner_lr is "
                 "unused (no inner loop)"),
        papers=PAPERS[("protonet", n_way, k_shot)],
    )


def sinusoid(own: bool = False) -> Protocol:
    """MAML's sinusoid regression: K = 10 points, one step of 0.01, meta-batch 25; own=True: Reptile's settings."""
    return Protocol(
        n_query=10, meta_batch_size=25, inner_steps=5 if own else 1, inner_lr=0.01, meta_lr=1.0 if own else 1e-3,
        iterations=70_000, eval_inner_steps=10, test_tasks=600, test_queries=10, transductive=False,
        source=("Finn et al. 2017, section 5.1 (one step of 0.01 with K = 10, Adam); cbfinn/maml main.py (usage: "
                "70,000 iterations; meta_batch_size 25; 10 test steps; K query points; 600 test tasks)"),
        differs=("main.py's update_lr default is 0.001 and its sinusoid command does not set it; the paper's 0.01 "
                 "is used." + (" Reptile's sinusoid settings (5 SGD steps, outer step 1 annealed to 0) are this "
                               "package's, not a published protocol" if own else "")),
    )


MAML_FAMILY = ("maml", "fomaml", "anil", "metasgd")
PROTOCOLS: dict[tuple[str, str, int, int], Protocol] = {
    **{("omniglot", name, n, k): maml(n, k, name) for name in MAML_FAMILY for n, k in CELLS},
    **{("omniglot", "reptile", n, k): reptile(n, k) for n, k in CELLS},
    **{("omniglot", "protonet", n, k): protonet(n, k) for n, k in CELLS},
    **{("sinusoid", name, 1, 10): sinusoid() for name in MAML_FAMILY},
    ("sinusoid", "reptile", 1, 10): sinusoid(own=True),
}


def protocol(dataset: str, algo: str, n_way: int, k_shot: int) -> Protocol:
    """The row of a cell; for settings no paper ran, the row nearest in ways, then in shots."""
    keys = [key for key in PROTOCOLS if key[:2] == (dataset, algo)]
    if not keys:
        raise ValueError(f"No protocol for {algo} on {dataset}; the table has "
                         f"{', '.join(sorted({f'{name} on {d}' for d, name, _, _ in PROTOCOLS}))}.")
    return PROTOCOLS[min(keys, key=lambda key: (abs(key[2] - n_way), abs(key[3] - k_shot)))]
