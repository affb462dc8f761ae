"""The bookkeeping of a BN layer: parameters and buffers, freezing, and re-estimating.

A BN layer holds four per-channel tensors. ``weight`` ($\\gamma$) and ``bias`` ($\\beta$)
are parameters, moved by the optimizer; ``running_mean`` and ``running_var`` are buffers,
moved by the exponential moving average of every training-mode forward pass (plus the
counter ``num_batches_tracked``). The two are stopped by different switches:
``requires_grad=False`` stops $\\gamma$ and $\\beta$; only eval mode stops the running
statistics. :func:`freeze_batch_norm` flips both, and keeps the layer in eval mode when the
surrounding model is put back into ``train()`` (what Keras' ``trainable=False`` does).
:func:`reestimate_running_stats` recomputes the running statistics from data. Keras' and
Flax's own layers are run by :mod:`bncourse.ports`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .layer import BatchNorm

__all__ = [
    "is_batch_norm",
    "batch_norm_layers",
    "count_values",
    "freeze_batch_norm",
    "unfreeze_batch_norm",
    "is_frozen",
    "reestimate_running_stats",
    "running_mean_trajectories",
    "running_stat_trajectories",
    "steady_spread",
    "simulated_wander",
]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm, BatchNorm)


def is_batch_norm(module: nn.Module) -> bool:
    """True for torch's BatchNorm1d/2d/3d (and SyncBatchNorm) and :class:`bncourse.BatchNorm`."""
    return isinstance(module, _BN_TYPES)


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BN layer of ``model`` (``model`` itself included), in registration order."""
    return [m for m in model.modules() if is_batch_norm(m)]


def count_values(model: nn.Module) -> tuple[int, int]:
    """``(trainable, non_trainable)`` numbers of values, counted the way Keras' summary does.

    Trainable: entries of parameters with ``requires_grad``. Non-trainable: entries of frozen
    parameters plus floating-point buffers (a BN layer's running mean and variance). The
    integer counter ``num_batches_tracked`` is bookkeeping, not a value of the model, and is
    not counted (Keras has no such counter).
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return trainable, frozen + buffers


class _StayInEval:
    """Replaces a frozen layer's ``train``: whatever mode is asked for, eval mode is set."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.layer, False)


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Freeze every BN layer of ``model`` the way Keras' ``trainable=False`` does.

    For each layer: ``weight`` and ``bias`` get ``requires_grad=False`` (the optimizer no
    longer moves $\\gamma$, $\\beta$), the layer goes to eval mode (it normalizes with its
    running statistics and no longer updates them), and it stays in eval mode when
    ``model.train()`` is called later. Other layers are untouched. Returns ``model``.
    """
    for layer in batch_norm_layers(model):
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.requires_grad_(False)
        layer.train = _StayInEval(layer)  # an instance attribute shadows nn.Module.train
        nn.Module.train(layer, False)
    return model


def is_frozen(layer: nn.Module) -> bool:
    """True when ``layer`` was frozen by :func:`freeze_batch_norm`."""
    return isinstance(layer.__dict__.get("train"), _StayInEval)


def unfreeze_batch_norm(model: nn.Module, mode: bool | None = None) -> nn.Module:
    """Undo :func:`freeze_batch_norm`: trainable $\\gamma$, $\\beta$, and ordinary ``train()``.

    Each layer is put in ``mode`` (training when True); by default it takes the mode of
    ``model``. Returns ``model``.
    """
    mode = model.training if mode is None else mode
    for layer in batch_norm_layers(model):
        if is_frozen(layer):
            del layer.__dict__["train"]
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.requires_grad_(True)
        layer.train(mode)
    return model


@torch.no_grad()
def reestimate_running_stats(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute every BN layer's running statistics from ``batches`` (no gradient, no labels).

    The running statistics are reset and replaced by the cumulative average over the
    batches (``momentum=None``): $\\hat\\mu = \\frac{1}{K}\\sum_k \\mu_k$ and
    $\\hat\\sigma^2 = \\frac{1}{K}\\sum_k \\frac{m_k}{m_k - 1}\\sigma_k^2$. During the pass
    every other module is in eval mode (dropout off), and BN layers frozen by
    :func:`freeze_batch_norm` are re-estimated too. Afterwards every module's mode, every
    layer's momentum and frozen state are as before. ``batches`` yields inputs (a
    ``(x, y)`` pair uses ``x``). Returns ``model``.
    """
    layers = [m for m in batch_norm_layers(model) if m.running_mean is not None]
    modes = {module: module.training for module in model.modules()}
    momenta = [layer.momentum for layer in layers]
    try:
        for module in model.modules():
            nn.Module.train(module, False)
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            nn.Module.train(layer, True)
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += 1
        if seen == 0 and layers:
            raise ValueError("reestimate_running_stats needs at least one batch")
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            nn.Module.train(module, mode)
    return model


def running_mean_trajectories(
    momenta: Sequence[float | None],
    *,
    true_mean: float = 3.0,
    true_std: float = 2.0,
    batch_size: int = 32,
    n_batches: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Running mean of one channel after each of ``n_batches`` updates, one row per momentum.

    Batches are drawn from $\\mathcal{N}(\\mu, \\sigma^2)$ and fed in training mode to a fresh
    :class:`bncourse.BatchNorm` (running mean starts at 0); every momentum sees the same
    batches. Row ``i``, column ``k-1`` is $\\hat\\mu_k$ for ``momenta[i]``.
    """
    means, _ = running_stat_trajectories(momenta, true_mean=true_mean, true_std=true_std,
                                         batch_size=batch_size, n_batches=n_batches, seed=seed)
    return means


def running_stat_trajectories(
    momenta: Sequence[float | None],
    *,
    true_mean: float = 3.0,
    true_std: float = 2.0,
    batch_size: int = 32,
    n_batches: int = 300,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Running mean *and* running variance after each update, one row per momentum.

    The same batches as :func:`running_mean_trajectories` (same arguments, same seed). The
    running variance starts at PyTorch's initial value 1, the mean at 0. Returns
    ``(means, variances)``, each of shape ``(len(momenta), n_batches)``.
    """
    gen = torch.Generator().manual_seed(seed)
    data = true_mean + true_std * torch.randn(
        n_batches, batch_size, 1, generator=gen, dtype=torch.float64
    )
    means = np.empty((len(momenta), n_batches))
    variances = np.empty((len(momenta), n_batches))
    for i, momentum in enumerate(momenta):
        layer = BatchNorm(1, momentum=momentum, dtype=torch.float64)
        for k in range(n_batches):
            layer(data[k])
            means[i, k] = float(layer.running_mean[0])
            variances[i, k] = float(layer.running_var[0])
    return means, variances


def steady_spread(momentum: float, *, true_std: float = 2.0,
                  batch_size: int = 32) -> tuple[float, float]:
    r"""Predicted standard deviations of the running mean and running variance at steady state.

    A moving average with PyTorch's ``momentum`` $\alpha$ of independent batch statistics has
    variance $\frac{\alpha}{2 - \alpha}$ times that of one batch's statistic: $\sigma^2/m$ for
    the batch mean, $2\sigma^4/(m-1)$ for the unbiased batch variance of normal data (with
    $m$ = ``batch_size``). Returns the two square roots, ``(mean_spread, var_spread)``.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must lie in (0, 1]; got {momentum}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2; got {batch_size}")
    share = momentum / (2 - momentum)
    return (float(np.sqrt(share * true_std**2 / batch_size)),
            float(np.sqrt(share * 2 * true_std**4 / (batch_size - 1))))


def simulated_wander(
    momentum: float,
    *,
    true_mean: float = 3.0,
    true_std: float = 2.0,
    batch_size: int = 32,
    n_batches: int = 300,
    start: int = 50,
    trajectories: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""How far one trajectory's wander strays from the prediction: ratios over many trajectories.

    Simulates ``trajectories`` independent runs of PyTorch's update with ``momentum``, from the
    initial values 0 and 1, over ``n_batches`` batches of ``batch_size`` normal values. For
    normal data the batch mean is $\mathcal{N}(\mu, \sigma^2/m)$ and the unbiased batch
    variance $\sigma^2\chi^2_{m-1}/(m-1)$, independent of each other, so each batch is drawn
    as these two numbers. For each run, the standard deviation of the running mean (and of the
    running variance) over batches ``start+1`` to ``n_batches`` is divided by
    :func:`steady_spread`'s prediction. Returns ``(mean_ratios, var_ratios)``, one value per
    run: their scatter is how far the ratio of a single trajectory, such as the one a figure
    shows, may stray from 1 by chance.
    """
    if not 0 <= start < n_batches - 1:
        raise ValueError(f"start must lie in [0, n_batches - 1); got {start} for {n_batches}")
    gen = np.random.default_rng(seed)
    mean_spread, var_spread = steady_spread(momentum, true_std=true_std, batch_size=batch_size)
    running_mean, running_var = np.zeros(trajectories), np.ones(trajectories)
    means = np.empty((trajectories, n_batches))
    variances = np.empty((trajectories, n_batches))
    for k in range(n_batches):
        batch_mean = true_mean + true_std / np.sqrt(batch_size) * gen.standard_normal(trajectories)
        batch_var = true_std**2 * gen.chisquare(batch_size - 1, trajectories) / (batch_size - 1)
        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var = (1 - momentum) * running_var + momentum * batch_var
        means[:, k], variances[:, k] = running_mean, running_var
    return (means[:, start:].std(axis=1) / mean_spread,
            variances[:, start:].std(axis=1) / var_spread)

