"""Small training runs on the scikit-learn digits: data, MLPs with BN, and the train-only-BN study.

The digits data set (1797 images of 8x8 pixels, 10 classes) ships inside scikit-learn, so
nothing is downloaded. :func:`load_digits_data` splits it once (stratified, fixed seed) and
standardizes every pixel with the training set's mean and standard deviation.

:func:`train_only_bn_experiment` compares four ways of training the same randomly
initialised network: every weight (``"all"``), only BN's $\\gamma$ and $\\beta$
(``"bn_only"``), nothing (``"none"``), and as many randomly chosen non-BN weights as BN has
parameters (``"random_subset"``). Progress is shown with tqdm when the environment variable
``BNCOURSE_QUIET`` is unset.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

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
    "select_trainable",
    "train",
    "ExperimentResult",
    "train_only_bn_experiment",
    "VARIANTS",
    "torch_threads",
    "bn_parameter_count",
    "DriftResult",
    "drift_while_frozen",
]

#: The four variants of the train-only-BN experiment, in the order they are reported.
VARIANTS = ("all", "bn_only", "random_subset", "none")


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


@dataclass(frozen=True)
class DigitsData:
    """Standardized digits: ``x_*`` float32 of shape ``(n, 64)``, ``y_*`` int64 labels 0..9."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    pixel_mean: np.ndarray
    pixel_std: np.ndarray

    def standardize(self, raw: np.ndarray) -> Tensor:
        """Raw pixels (0..16) to the standardized float32 inputs the networks take."""
        return torch.as_tensor((raw - self.pixel_mean) / self.pixel_std, dtype=torch.float32)


def load_digits_data(test_fraction: float = 0.3, seed: int = 0) -> DigitsData:
    r"""The scikit-learn digits, split stratified into train/test, standardized per pixel.

    $x \mapsto (x - \bar{x}_{\mathrm{train}})/s_{\mathrm{train}}$ per pixel; pixels that
    are constant on the training set (always 0 at the border) are only centred.
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
        return torch.as_tensor((a - mean) / std, dtype=torch.float32)

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
) -> nn.Sequential:
    """``Linear -> BN -> ReLU`` per hidden width, then ``Linear`` to the class scores.

    ``bn`` is the BN class (``torch.nn.BatchNorm1d`` or :class:`bncourse.BatchNorm`), or
    ``None`` for no normalization. Weights use torch's default initialisation under
    ``torch.manual_seed(seed)``; $\\gamma = 1$, $\\beta = 0$.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = in_features
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if bn is not None:
            layers.append(bn(width))
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, classes))
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


def select_trainable(model: nn.Module, variant: str, seed: int = 0) -> int:
    """Set which entries of ``model`` train for one of :data:`VARIANTS`; returns their number.

    ``"all"``: every parameter. ``"bn_only"``: BN's $\\gamma$ and $\\beta$, nothing else.
    ``"none"``: nothing. ``"random_subset"``: as many entries as BN has, drawn uniformly at
    random (seeded) from the weights and biases of the linear layers; BN's are frozen. The
    other entries of a partly trained tensor are held fixed by zeroing their gradient.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    bn_params = [p for m in batch_norm_layers(model) for p in m.parameters(recurse=False)]
    bn_ids = {id(p) for p in bn_params}
    others = [p for p in model.parameters() if id(p) not in bn_ids]
    n_bn = sum(p.numel() for p in bn_params)
    for p in model.parameters():
        p.requires_grad_(variant == "all")
    if variant == "bn_only":
        for p in bn_params:
            p.requires_grad_(True)
        return n_bn
    if variant == "all":
        return sum(p.numel() for p in model.parameters())
    if variant == "none":
        return 0
    # random_subset
    sizes = [p.numel() for p in others]
    total = sum(sizes)
    if n_bn == 0 or n_bn > total:
        raise ValueError(f"cannot choose {n_bn} of the {total} non-BN entries")
    gen = torch.Generator().manual_seed(10_000 + seed)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=gen)[:n_bn]] = True
    for p, mask in zip(others, torch.split(chosen, sizes), strict=True):
        mask = mask.view_as(p)
        if mask.any():
            p.requires_grad_(True)
            p.register_hook(lambda g, mask=mask: g * mask)
    return n_bn


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


@dataclass
class ExperimentResult:
    """Test accuracies ``accuracy[variant]`` (one per seed) and trained counts per variant."""

    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    trained: dict[str, int] = field(default_factory=dict)
    total_parameters: int = 0

    def mean(self, variant: str) -> float:
        """Mean test accuracy of ``variant`` over the seeds."""
        return float(np.mean(self.accuracy[variant]))

    def spread(self, variant: str) -> tuple[float, float]:
        """Smallest and largest test accuracy of ``variant`` over the seeds."""
        return float(np.min(self.accuracy[variant])), float(np.max(self.accuracy[variant]))


def train_only_bn_experiment(
    data: DigitsData,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    widths: Sequence[int] = (64, 64, 64, 64),
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 0.05,
    variants: Sequence[str] = VARIANTS,
    progress: bool | None = None,
    threads: int | None = 1,
) -> ExperimentResult:
    """Train each variant from the same random network per seed; test accuracy after training.

    Before testing, every network's running statistics are re-estimated on the whole
    training set (one batch), so all variants, the untrained one included, are evaluated in
    eval mode with statistics that match their weights.
    """
    tqdm = _tqdm()
    result = ExperimentResult(seeds=tuple(seeds), widths=tuple(widths))
    show = (not quiet()) if progress is None else progress
    runs = [(v, s) for v in variants for s in seeds]
    with torch_threads(threads):
        for variant, seed in tqdm(runs, desc="train-only-BN runs", disable=not show):
            model = make_mlp(widths, seed=seed)
            result.total_parameters = sum(p.numel() for p in model.parameters())
            result.trained[variant] = select_trainable(model, variant, seed=seed)
            train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  progress=False, threads=None)
            reestimate_running_stats(model, [data.x_train])
            result.accuracy.setdefault(variant, []).append(
                accuracy(model, data.x_test, data.y_test)
            )
    return result


def bn_parameter_count(model: nn.Module) -> int:
    """Number of $\\gamma$ and $\\beta$ entries in ``model``."""
    return sum(
        p.numel() for m in model.modules() if is_batch_norm(m) for p in m.parameters(recurse=False)
    )


@dataclass(frozen=True)
class DriftResult:
    """After each of ``steps`` forward passes: BN drift and the accuracy on clean test data."""

    steps: np.ndarray
    drift: np.ndarray
    accuracy: np.ndarray


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
    return DriftResult(np.arange(steps + 1), np.array(drifts), np.array(accuracies))
