"""Small training runs on the scikit-learn digits: data, MLPs with BN, and the train-only-BN study.

The digits data set (1797 images of 8x8 pixels, 10 classes) ships inside scikit-learn, so
nothing is downloaded. :func:`load_digits_data` splits it once (stratified, fixed seed) and
standardizes every pixel with the training set's mean and standard deviation.

:func:`train_only_bn_experiment` compares ways of training the same randomly initialised
network (see :data:`VARIANTS`): every weight, only BN's $\\gamma$ and $\\beta$, BN and the
output layer, the output layer alone (random features with a trained linear readout), as many
randomly chosen non-BN weights as BN has parameters, and nothing. Each variant's learning
rate is chosen by :func:`select_learning_rates` on a validation split carved from the
training set, never the test set. That selection is the expensive part (105 training runs),
so it is stored: ``python -m bncourse.training`` runs it and writes
``book/data/train_only_bn_lr.json``, which chapter 3 reads (and re-checks in part). Progress
is shown with tqdm when the environment variable ``BNCOURSE_QUIET`` is unset.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .claims import Estimate
from .claims import paired_difference as _paired_difference
from .freezing import (
    batch_norm_layers,
    freeze_batch_norm,
    is_batch_norm,
    reestimate_running_stats,
)

__all__ = [
    "DigitsData",
    "load_digits_data",
    "make_mlp",
    "quiet",
    "minibatches",
    "accuracy",
    "correct_predictions",
    "select_trainable",
    "train",
    "ExperimentResult",
    "train_only_bn_experiment",
    "VARIANTS",
    "TRAINED_VARIANTS",
    "LR_GRID",
    "split_validation",
    "LRSelection",
    "select_learning_rates",
    "best_rate",
    "switched_off_fraction",
    "output_layer",
    "torch_threads",
    "bn_parameter_count",
    "DriftResult",
    "drift_while_frozen",
]

#: The variants of the train-only-BN experiment, in the order they are reported: every
#: parameter; BN's gamma and beta plus the output layer; BN's gamma and beta alone; the output
#: layer alone (a linear readout of random features); as many randomly chosen non-BN entries
#: as BN has; nothing.
VARIANTS = ("all", "bn_output", "bn_only", "output_only", "random_subset", "none")

#: The variants that train something (and so need a learning rate).
TRAINED_VARIANTS = VARIANTS[:-1]

#: The learning rates :func:`select_learning_rates` tries by default (Adam). The grid reaches
#: 1.0 so that every variant's best rate lies inside it, not at its edge (BN alone does best at
#: 0.3).
LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: leave the setting), then restore it.

    The networks here are so small that one thread is the fastest on a busy machine, and a
    fixed thread count makes the floating-point sums, hence the results, independent of
    how many cores the machine has.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tqdm():
    """tqdm's notebook bar when ipywidgets is available, its text bar otherwise (no warning)."""
    from tqdm import TqdmExperimentalWarning, TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        from tqdm.auto import tqdm
    return tqdm


def quiet() -> bool:
    """True when progress bars must stay off (the environment variable BNCOURSE_QUIET is set)."""
    return os.environ.get("BNCOURSE_QUIET", "") not in ("", "0")


#: The floating-point type of the digits and of the networks trained on them. Training in
#: float32 gives weights that differ in their last bits with the CPU's kernels and the thread
#: count, and a few hundred steps amplify those bits into a different accuracy; in float64 the
#: same differences stay below 1e-10 and every printed result is the same on any machine.
DTYPE = torch.float64


@dataclass(frozen=True)
class DigitsData:
    """Standardized digits: ``x_*`` of shape ``(n, 64)`` in :data:`DTYPE`, ``y_*`` int64 0..9."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    pixel_mean: np.ndarray
    pixel_std: np.ndarray

    def standardize(self, raw: np.ndarray) -> Tensor:
        """Raw pixels (0..16) to the standardized inputs the networks take (``x_train``'s dtype)."""
        return torch.as_tensor((raw - self.pixel_mean) / self.pixel_std,
                               dtype=self.x_train.dtype)


def load_digits_data(test_fraction: float = 0.3, seed: int = 0,
                     dtype: torch.dtype = DTYPE) -> DigitsData:
    r"""The scikit-learn digits, split stratified into train/test, standardized per pixel.

    $x \mapsto (x - \bar{x}_{\mathrm{train}})/s_{\mathrm{train}}$ per pixel; pixels that
    are constant on the training set (always 0 at the border) are only centred. The inputs
    are ``dtype`` (float64 by default, see :data:`DTYPE`).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data, digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target,
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def to_x(a: np.ndarray) -> Tensor:
        return torch.as_tensor((a - mean) / std, dtype=dtype)

    return DigitsData(
        x_train=to_x(x_tr), y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=to_x(x_te), y_test=torch.as_tensor(y_te, dtype=torch.int64),
        pixel_mean=mean, pixel_std=std,
    )


def make_mlp(
    widths: Sequence[int] = (128, 128),
    *,
    in_features: int = 64,
    classes: int = 10,
    bn: type[nn.Module] | None = nn.BatchNorm1d,
    seed: int = 0,
    bias_before_bn: bool = True,
    dtype: torch.dtype = DTYPE,
) -> nn.Sequential:
    """``Linear -> BN -> ReLU`` per hidden width, then ``Linear`` to the class scores.

    ``bn`` is the BN class (``torch.nn.BatchNorm1d`` or :class:`bncourse.BatchNorm`), or
    ``None`` for no normalization. ``bias_before_bn=False`` drops the bias of every linear
    layer followed by BN (BN subtracts the mean, so such a bias has no effect on the output;
    with ``bn=None`` the biases are kept). Weights use torch's default initialisation under
    ``torch.manual_seed(seed)``; $\\gamma = 1$, $\\beta = 0$. Parameters and buffers are
    ``dtype`` (float64 by default, like :func:`load_digits_data`'s inputs).
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = in_features
    for width in widths:
        layers.append(nn.Linear(previous, width, bias=bias_before_bn or bn is None,
                                dtype=dtype))
        if bn is not None:
            layers.append(bn(width, dtype=dtype))
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, classes, dtype=dtype))
    return nn.Sequential(*layers)


def minibatches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled ``(x, y)`` mini-batches; a last batch of one example is dropped.

    (Training-mode BN cannot normalize a batch of one.)
    """
    order = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() > 1:
            yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of examples whose largest class score is the label, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).float().mean())
    finally:
        model.train(was_training)


@torch.no_grad()
def correct_predictions(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One boolean per example: is the largest class score the label? (eval mode).

    The mean is :func:`accuracy`; two models scored on the same examples give paired
    values, whose difference :func:`bncourse.claims.paired_difference` turns into a mean
    with its standard error.
    """
    was_training = model.training
    model.eval()
    try:
        return model(x).argmax(dim=1) == y
    finally:
        model.train(was_training)


def output_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` of ``model`` (the layer that produces the class scores)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer, so no output layer")
    return linears[-1]


def _redundant_biases(model: nn.Module) -> set[int]:
    """Ids of biases of layers directly followed by BN inside an ``nn.Sequential``.

    BN subtracts the batch mean, so such a bias changes nothing but the running mean: it is
    kept out of the random-subset pool, where training it would be a wasted choice.
    """
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for layer, following in zip(children, children[1:], strict=False):
                bias = getattr(layer, "bias", None)
                if isinstance(bias, nn.Parameter) and is_batch_norm(following):
                    ids.add(id(bias))
    return ids


def select_trainable(model: nn.Module, variant: str, seed: int = 0) -> int:
    """Set which entries of ``model`` train for one of :data:`VARIANTS`; returns their number.

    ``"all"``: every parameter. ``"bn_only"``: BN's $\\gamma$ and $\\beta$, nothing else.
    ``"bn_output"``: BN's $\\gamma$, $\\beta$ and the output layer (:func:`output_layer`).
    ``"output_only"``: the output layer alone. ``"none"``: nothing. ``"random_subset"``: as
    many entries as BN has, drawn uniformly at random (seeded) from the non-BN parameters,
    leaving out biases directly followed by BN (they have no effect on the output); BN's are
    frozen. The other entries of a partly trained tensor are held fixed by zeroing their
    gradient.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    bn_params = [p for m in batch_norm_layers(model) for p in m.parameters(recurse=False)]
    bn_ids = {id(p) for p in bn_params}
    n_bn = sum(p.numel() for p in bn_params)
    for p in model.parameters():
        p.requires_grad_(variant == "all")
    if variant == "all":
        return sum(p.numel() for p in model.parameters())
    if variant == "none":
        return 0
    chosen_params: list[nn.Parameter] = []
    if variant in ("bn_only", "bn_output"):
        chosen_params += bn_params
    if variant in ("output_only", "bn_output"):
        chosen_params += list(output_layer(model).parameters())
    if variant != "random_subset":
        for p in chosen_params:
            p.requires_grad_(True)
        return sum(p.numel() for p in chosen_params)
    skip = bn_ids | _redundant_biases(model)
    pool = [p for p in model.parameters() if id(p) not in skip]
    sizes = [p.numel() for p in pool]
    total = sum(sizes)
    if n_bn == 0 or n_bn > total:
        raise ValueError(f"cannot choose {n_bn} of the {total} non-BN entries")
    gen = torch.Generator().manual_seed(10_000 + seed)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=gen)[:n_bn]] = True
    for p, mask in zip(pool, torch.split(chosen, sizes), strict=True):
        mask = mask.view_as(p)
        if mask.any():
            p.requires_grad_(True)
            p.register_hook(lambda g, mask=mask: g * mask)
    return n_bn


@torch.no_grad()
def switched_off_fraction(model: nn.Sequential, x: Tensor) -> float:
    """Fraction of hidden channels whose ReLU output is zero for every row of ``x`` (eval mode).

    A channel is switched off when BN's $\\gamma \\hat x + \\beta$ is never positive on
    ``x``: the ReLU after it passes nothing, whatever the input. ``model`` is an
    ``nn.Sequential`` (as :func:`make_mlp` builds); every ``nn.ReLU`` in it is inspected.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"switched_off_fraction needs an nn.Sequential; got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        off = total = 0
        h = x
        for layer in model:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                off += int((h > 0).sum(dim=0).eq(0).sum())
                total += h.shape[1]
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the model has no nn.ReLU, so no hidden channel to inspect")
    return off / total


def train(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool | None = None,
    description: str = "training",
    threads: int | None = 1,
) -> list[float]:
    """Adam on the cross-entropy over mini-batches; returns the mean training loss per epoch.

    Only parameters with ``requires_grad`` move. The BN layers are in training mode (batch
    statistics, running statistics updated) unless frozen. A tqdm bar over the epochs is
    shown when ``progress`` is True, or by default when the environment is not quiet. The
    run uses ``threads`` intra-op threads (see :func:`torch_threads`).
    """
    tqdm = _tqdm()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    show = (not quiet()) if progress is None else progress
    losses = []
    model.train()
    with torch_threads(threads):
        for _ in tqdm(range(epochs), desc=description, disable=not show, leave=False):
            total, count = 0.0, 0
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                loss = loss_fn(model(xb), yb)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                total += float(loss.detach()) * xb.shape[0]
                count += xb.shape[0]
            losses.append(total / count)
    return losses


def _mean_and_sem(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    sem = float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else float("nan")
    return float(a.mean()), sem


@dataclass
class ExperimentResult:
    """Test accuracies ``accuracy[variant]`` (one per seed, in the order of ``seeds``).

    ``trained[variant]`` is the number of trained entries, ``lr[variant]`` the learning rate
    used, and ``switched_off[variant]`` the fraction of hidden channels switched off after
    training, per seed (:func:`switched_off_fraction` on the training inputs).
    """

    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    trained: dict[str, int] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    switched_off: dict[str, list[float]] = field(default_factory=dict)
    total_parameters: int = 0

    def mean(self, variant: str) -> float:
        """Mean test accuracy of ``variant`` over the seeds."""
        return float(np.mean(self.accuracy[variant]))

    def sem(self, variant: str) -> float:
        """Standard error of the mean test accuracy (sample standard deviation / sqrt(n))."""
        return _mean_and_sem(self.accuracy[variant])[1]

    def spread(self, variant: str) -> tuple[float, float]:
        """Smallest and largest test accuracy of ``variant`` over the seeds."""
        return float(np.min(self.accuracy[variant])), float(np.max(self.accuracy[variant]))

    def paired_difference(self, a: str, b: str) -> Estimate:
        """``accuracy[a] - accuracy[b]`` seed by seed, in percentage points.

        Mean, standard error, count and 95% interval
        (:func:`bncourse.claims.paired_difference`). Both variants start from the same random
        network for a given seed, so the pairing removes the part of the scatter that the two
        share.
        """
        return _paired_difference(100 * np.asarray(self.accuracy[a]),
                                  100 * np.asarray(self.accuracy[b]),
                                  what=f"test accuracy, {a} minus {b} (points)")


def _run_variant(
    data: DigitsData,
    variant: str,
    seed: int,
    *,
    widths: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
) -> tuple[nn.Sequential, int]:
    """One run: build the network for ``seed``, train ``variant``, re-estimate the statistics."""
    model = make_mlp(widths, seed=seed, bias_before_bn=False)
    trained = select_trainable(model, variant, seed=seed)
    if variant != "none":
        train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
              progress=False, threads=None)
    reestimate_running_stats(model, [data.x_train])
    return model, trained


def train_only_bn_experiment(
    data: DigitsData,
    *,
    seeds: Sequence[int] = tuple(range(10)),
    widths: Sequence[int] = (64, 64, 64, 64),
    epochs: int = 20,
    batch_size: int = 128,
    lr: float | Mapping[str, float] = 0.01,
    variants: Sequence[str] = VARIANTS,
    progress: bool | None = None,
    threads: int | None = 1,
) -> ExperimentResult:
    """Train each variant from the same random network per seed; test accuracy after training.

    The network is :func:`make_mlp` with ``bias_before_bn=False`` (the biases before BN are
    redundant). ``lr`` is one learning rate for every variant or a mapping variant -> rate
    (:func:`select_learning_rates` chooses them on a validation split). Before testing,
    every network's running statistics are re-estimated on the whole training set (one
    batch), so all variants, the untrained one included, are evaluated in eval mode with
    statistics that match their weights.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")
    rates = {v: (lr[v] if isinstance(lr, Mapping) else float(lr))
             for v in variants if v != "none"}
    tqdm = _tqdm()
    result = ExperimentResult(seeds=tuple(seeds), widths=tuple(widths), lr=rates)
    show = (not quiet()) if progress is None else progress
    runs = [(v, s) for v in variants for s in seeds]
    with torch_threads(threads):
        for variant, seed in tqdm(runs, desc="train-only-BN runs", disable=not show):
            model, trained = _run_variant(
                data, variant, seed, widths=widths, epochs=epochs, batch_size=batch_size,
                lr=rates.get(variant, 0.0),
            )
            result.total_parameters = sum(p.numel() for p in model.parameters())
            result.trained[variant] = trained
            result.accuracy.setdefault(variant, []).append(
                accuracy(model, data.x_test, data.y_test)
            )
            result.switched_off.setdefault(variant, []).append(
                switched_off_fraction(model, data.x_train)
            )
    return result


def split_validation(data: DigitsData, fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """A validation split carved from the *training* set (stratified); the test set is unused.

    Returns a :class:`DigitsData` whose ``x_train``/``y_train`` are the remaining training
    examples and whose ``x_test``/``y_test`` are the validation examples. The inputs keep
    the training set's standardization.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1; got {fraction}")
    idx = np.arange(data.x_train.shape[0])
    fit, val = train_test_split(idx, test_size=fraction, random_state=seed,
                                stratify=data.y_train.numpy())
    fit, val = torch.from_numpy(np.sort(fit)), torch.from_numpy(np.sort(val))
    return DigitsData(
        x_train=data.x_train[fit], y_train=data.y_train[fit],
        x_test=data.x_train[val], y_test=data.y_train[val],
        pixel_mean=data.pixel_mean, pixel_std=data.pixel_std,
    )


@dataclass
class LRSelection:
    """Validation accuracy per variant, learning rate and seed, and the rate chosen.

    ``accuracy[variant][i][j]`` is the validation accuracy at ``lrs[i]`` for ``seeds[j]``;
    ``chosen[variant]`` is the rate with the highest mean over the seeds (the smaller rate
    on a tie). The other fields record the settings, so the selection can be repeated;
    ``provenance`` (written by :func:`main`) records the command that made the stored file,
    the runs it repeats, the date, the machine and its load average before and after.
    """

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    epochs: int
    batch_size: int
    validation_fraction: float
    split_seed: int
    accuracy: dict[str, list[list[float]]] = field(default_factory=dict)
    chosen: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, object] | None = None

    def mean_accuracy(self, variant: str) -> np.ndarray:
        """Mean validation accuracy over the seeds, one value per learning rate."""
        return np.asarray(self.accuracy[variant]).mean(axis=1)

    def settings(self) -> dict[str, object]:
        """The keyword arguments of :func:`select_learning_rates` that reproduce this."""
        return {"variants": tuple(self.chosen), "lrs": self.lrs, "seeds": self.seeds,
                "widths": self.widths, "epochs": self.epochs, "batch_size": self.batch_size,
                "validation_fraction": self.validation_fraction, "split_seed": self.split_seed}

    def to_json(self, path: str | Path) -> None:
        """Write the selection as JSON (settings, accuracies and choices as plain values)."""
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> LRSelection:
        """Read a selection written by :meth:`to_json`."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("lrs", "seeds", "widths"):
            raw[key] = tuple(raw[key])
        return cls(**raw)



def select_learning_rates(
    data: DigitsData,
    *,
    variants: Sequence[str] = TRAINED_VARIANTS,
    lrs: Sequence[float] = LR_GRID,
    seeds: Sequence[int] = (100, 101, 102),
    widths: Sequence[int] = (64, 64, 64, 64),
    epochs: int = 20,
    batch_size: int = 128,
    validation_fraction: float = 0.2,
    split_seed: int = 0,
    progress: bool | None = None,
    threads: int | None = 1,
) -> LRSelection:
    """Choose each variant's learning rate on a validation split of the training set.

    Every ``(variant, lr, seed)`` is trained on the training set minus the validation split
    (:func:`split_validation`) and scored on the validation split; the rate with the best
    mean over ``seeds`` wins. The seeds default to ones the final runs do not use.
    """
    if "none" in variants:
        raise ValueError("the 'none' variant trains nothing and has no learning rate")
    split = split_validation(data, validation_fraction, split_seed)
    selection = LRSelection(
        lrs=tuple(float(r) for r in lrs), seeds=tuple(seeds), widths=tuple(widths),
        epochs=epochs, batch_size=batch_size, validation_fraction=validation_fraction,
        split_seed=split_seed,
    )
    tqdm = _tqdm()
    show = (not quiet()) if progress is None else progress
    runs = [(v, r, s) for v in variants for r in selection.lrs for s in selection.seeds]
    scores: dict[tuple[str, float, int], float] = {}
    with torch_threads(threads):
        for variant, rate, seed in tqdm(runs, desc="learning-rate selection", disable=not show):
            model, _ = _run_variant(split, variant, seed, widths=widths, epochs=epochs,
                                    batch_size=batch_size, lr=rate)
            scores[variant, rate, seed] = accuracy(model, split.x_test, split.y_test)
    for variant in variants:
        selection.accuracy[variant] = [
            [scores[variant, r, s] for s in selection.seeds] for r in selection.lrs
        ]
        selection.chosen[variant] = best_rate(selection.lrs, selection.mean_accuracy(variant))
    return selection


def best_rate(lrs: Sequence[float], mean_accuracy: Sequence[float]) -> float:
    """The rate with the highest mean accuracy, and the smaller rate on a tie.

    The means are compared rounded to 1e-6: an accuracy is a count over the validation
    examples, stored as a float32 ratio, so two rates with the same total count can have means
    that differ in their last bits, and without the rounding that round-off, not the rule,
    would break the tie. (Distinct counts differ by far more: 1/(seeds x examples).)
    """
    means = np.round(np.asarray(mean_accuracy, dtype=np.float64), 6)
    return float(lrs[int(np.argmax(means))])  # argmax takes the first maximum: the smaller


def bn_parameter_count(model: nn.Module) -> int:
    """Number of $\\gamma$ and $\\beta$ entries in ``model``."""
    return sum(
        p.numel() for m in model.modules() if is_batch_norm(m) for p in m.parameters(recurse=False)
    )


@dataclass(frozen=True)
class DriftResult:
    """After each of ``steps`` forward passes: BN drift and the accuracy on clean test data.

    ``model`` is the drifted copy after the last pass (the input model is left alone).
    """

    steps: np.ndarray
    drift: np.ndarray
    accuracy: np.ndarray
    model: nn.Module | None = None


def drift_while_frozen(
    model: nn.Module,
    x_new: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    how: str = "requires_grad",
    steps: int = 60,
    batch_size: int = 16,
    seed: int = 0,
    threads: int | None = 1,
) -> DriftResult:
    r"""Run a "frozen" copy of ``model`` over batches of ``x_new`` in ``train()`` mode.

    ``how="requires_grad"`` freezes by ``requires_grad_(False)`` on every parameter (the
    common mistake); ``how="freeze_batch_norm"`` also applies
    :func:`bncourse.freezing.freeze_batch_norm`. After each pass, ``drift`` is
    $\operatorname{mean}_c |\hat\mu_c - \hat\mu_c^{(0)}| / \hat\sigma_c^{(0)}$ over the
    channels of every BN layer (how far the running means moved, in units of the original
    running standard deviation) and ``accuracy`` is the test accuracy on ``(x_test,
    y_test)``. Step 0 is the untouched model. ``model`` itself is not modified.
    """
    import copy

    if how not in ("requires_grad", "freeze_batch_norm"):
        raise ValueError(f"how must be 'requires_grad' or 'freeze_batch_norm'; got {how!r}")
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if how == "freeze_batch_norm":
        freeze_batch_norm(model)
    layers = batch_norm_layers(model)
    mean0 = torch.cat([m.running_mean.clone() for m in layers])
    std0 = torch.cat([m.running_var.clone() for m in layers]).sqrt()

    def drift() -> float:
        mean = torch.cat([m.running_mean for m in layers])
        return float(((mean - mean0).abs() / std0).mean())

    gen = torch.Generator().manual_seed(seed)
    drifts = [drift()]
    accuracies = [accuracy(model, x_test, y_test)]
    with torch_threads(threads):
        for _ in range(steps):
            model.train()  # what every training loop does at the start of an epoch
            idx = torch.randint(0, x_new.shape[0], (batch_size,), generator=gen)
            model(x_new[idx])
            drifts.append(drift())
            accuracies.append(accuracy(model, x_test, y_test))
    return DriftResult(np.arange(steps + 1), np.array(drifts), np.array(accuracies), model)


def _load_average() -> float | None:
    """The one-minute load average (None where the OS does not report one)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


#: Where :func:`main` writes the selection and chapter 3 reads it.
LR_FILE = Path(__file__).resolve().parent.parent / "book" / "data" / "train_only_bn_lr.json"


def main(argv: Sequence[str] | None = None) -> None:
    """Choose the train-only-BN learning rates on the validation split and store them."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bncourse.training", description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(LR_FILE),
                        help="where to write the JSON (default: book/data/train_only_bn_lr.json)")
    args = parser.parse_args(argv)
    import time

    from .bench import machine_info

    load_before = _load_average()
    start = time.perf_counter()
    selection = select_learning_rates(load_digits_data(), threads=1)
    seconds = time.perf_counter() - start
    selection.provenance = {
        "command": "python -m bncourse.training",
        "runs": (f"{len(selection.chosen)} variants x {len(selection.lrs)} learning rates x "
                 f"{len(selection.seeds)} seeds, one training run each"),
        "machine": machine_info(),
        "threads_per_run": 1,
        "load_average": [load_before, _load_average()],
        "seconds": round(seconds),
    }
    selection.to_json(args.path)
    for variant, rate in selection.chosen.items():
        means = np.round(100 * selection.mean_accuracy(variant), 1).tolist()
        print(f"{variant:<14} chosen lr {rate:g}; validation accuracy (%) by lr: {means}")


if __name__ == "__main__":
    main()
