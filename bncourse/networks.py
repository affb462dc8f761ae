"""Small networks and measurements for the chapter on the transform.

* :func:`make_mlp`: a seeded multilayer perceptron, with BN before or after each nonlinearity
  or without BN.
* :func:`bn_activations`: what every BN layer of a network receives and returns on a batch.
* :func:`batch_dependence`: the training-mode output of one fixed example in many batches.
* :func:`output_std`: how eps shrinks the output of a low-variance channel.
* :func:`compare_with_torch`: ``bncourse`` against ``torch.nn.BatchNorm1d/2d`` in float64.

Everything is seeded, so the same call gives the same numbers on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .functional import batch_norm_forward, batch_norm_inference, reduction_axes
from .layer import BatchNorm

__all__ = [
    "PLACEMENTS",
    "make_mlp",
    "bn_activations",
    "preactivations",
    "BatchDependence",
    "batch_dependence",
    "output_std",
    "compare_with_torch",
    "per_channel_moments",
]

#: Where the BN layer sits in each hidden block: before the ReLU (the original paper),
#: after it, or nowhere.
PLACEMENTS = ("before", "after", "none")


def make_mlp(
    in_features: int,
    width: int,
    depth: int,
    out_features: int,
    placement: str = "before",
    bias: bool = True,
    weight_std: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    r"""``depth`` hidden blocks Linear$\to$BN$\to$ReLU (``"before"``), Linear$\to$ReLU$\to$BN
    (``"after"``) or Linear$\to$ReLU (``"none"``), then a Linear output layer.

    ``weight_std``, when given, draws every weight from $\mathcal{N}(0, \text{weight\_std}^2)$
    (biases from the same law) instead of PyTorch's default initialisation, so that the scale
    of the pre-activations drifts from layer to layer. BN layers are :class:`bncourse.BatchNorm`.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    if min(in_features, width, depth, out_features) < 1:
        raise ValueError("in_features, width, depth and out_features must all be positive")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = in_features
    for _ in range(depth):
        linear = nn.Linear(fan_in, width, bias=bias, dtype=dtype)
        _initialise(linear, weight_std, generator)
        layers.append(linear)
        if placement == "before":
            layers += [BatchNorm(width, dtype=dtype), nn.ReLU()]
        elif placement == "after":
            layers += [nn.ReLU(), BatchNorm(width, dtype=dtype)]
        else:
            layers.append(nn.ReLU())
        fan_in = width
    head = nn.Linear(fan_in, out_features, dtype=dtype)
    _initialise(head, weight_std, generator)
    layers.append(head)
    return nn.Sequential(*layers)


def _initialise(linear: nn.Linear, weight_std: float | None, generator: torch.Generator) -> None:
    """PyTorch's uniform default, or N(0, weight_std^2), drawn from ``generator``."""
    bound = 1.0 / np.sqrt(linear.in_features)
    with torch.no_grad():
        for p in (linear.weight, linear.bias):
            if p is None:
                continue
            if weight_std is None:
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * weight_std)


def bn_activations(model: nn.Module, x: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each BN layer of ``model``, in order: (its input, its output) on the batch ``x``.

    The forward pass runs without gradients and in the model's current mode (training mode
    updates the running statistics, as any forward pass would).
    """
    layers = [m for m in model.modules()
              if isinstance(m, (BatchNorm, nn.modules.batchnorm._BatchNorm))]
    return _record(model, x, layers, lambda inputs, output: (_array(inputs[0]), _array(output)))


def preactivations(model: nn.Sequential, x: Tensor) -> list[np.ndarray]:
    """The outputs $z = W h + b$ of every Linear layer but the last, on the batch ``x``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    return _record(model, x, linears, lambda _inputs, output: _array(output))


def _array(t: Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _record(model: nn.Module, x: Tensor, layers: list[nn.Module],
            pick: Callable[[tuple[Tensor, ...], Tensor], Any]) -> list[Any]:
    """Run ``model(x)`` without gradients and return ``pick(inputs, output)`` of each layer."""
    records: list[Any] = []

    def hook(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        records.append(pick(inputs, output))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


@dataclass(frozen=True)
class BatchDependence:
    """Outputs of one example: ``train[b]`` over many batches of size ``b``; ``eval`` once."""

    example: float
    train: dict[int, np.ndarray]
    eval: float


def batch_dependence(
    batch_sizes: tuple[int, ...] = (4, 16, 64),
    n_batches: int = 2000,
    example: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    eps: float = 1e-5,
    seed: int = 0,
) -> BatchDependence:
    r"""$\hat{x}$ of a fixed value ``example`` when its $b - 1$ batch-mates are fresh draws.

    In training mode the example is normalized with the statistics of its batch, so its output
    varies from batch to batch; in eval mode it is normalized with the population statistics
    $(\text{mean}, \text{std}^2)$, playing the running statistics, and is the same every time.
    Batch-mates are drawn from $\mathcal{N}(\text{mean}, \text{std}^2)$; $\gamma = 1$, $\beta = 0$.
    """
    if min(batch_sizes) < 2:
        raise ValueError("training mode needs batches of at least 2 examples")
    rng = np.random.default_rng(seed)
    one = np.ones(1)
    zero = np.zeros(1)
    train = {}
    for b in batch_sizes:
        mates = rng.normal(mean, std, size=(n_batches, b - 1))
        batches = np.concatenate([np.full((n_batches, 1), example), mates], axis=1)
        # Each row is one batch of b examples of a single channel: (b, 1) per forward pass.
        train[b] = np.array(
            [batch_norm_forward(row[:, None], one, zero, eps)[0][0, 0] for row in batches]
        )
    evaluated = batch_norm_inference(
        np.array([[example]]), np.array([mean]), np.array([std**2]), one, zero, eps
    )[0, 0]
    return BatchDependence(example=example, train=train, eval=float(evaluated))


def output_std(input_std: np.ndarray, eps: float, m: int = 256, seed: int = 0) -> np.ndarray:
    r"""Std of $\hat{x}$ for channels of the given spreads: $\sigma_B/\sqrt{\sigma_B^2+\epsilon}$.

    One channel per entry of ``input_std``, each with ``m`` values drawn from
    $\mathcal{N}(5, \text{input\_std}^2)$ and normalized in training mode with ``eps``.
    """
    input_std = np.asarray(input_std, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = 5.0 + rng.standard_normal((m, input_std.size)) * input_std
    c = input_std.size
    x_hat = batch_norm_forward(x, np.ones(c), np.zeros(c), eps)[0]
    return x_hat.std(axis=0)


def compare_with_torch(shape: tuple[int, ...], seed: int = 0) -> dict[str, float]:
    """Largest absolute differences between ``bncourse`` and ``torch.nn.BatchNorm{1,2,3}d``.

    On a float64 input of ``shape`` with random gamma and beta: the training-mode output of
    :func:`bncourse.functional.batch_norm_forward` and of :class:`bncourse.BatchNorm`, the
    running mean and variance after that step, and the eval-mode output that follows.
    """
    torch_layers = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    if len(shape) not in torch_layers:
        raise ValueError(f"shape must have 2 to 5 dimensions; got {shape}")
    c = shape[1]
    generator = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(shape, generator=generator, dtype=torch.float64) + 1.0
    gamma = torch.rand(c, generator=generator, dtype=torch.float64) + 0.5
    beta = torch.randn(c, generator=generator, dtype=torch.float64)
    ours = BatchNorm(c, dtype=torch.float64)
    reference = torch_layers[len(shape)](c, dtype=torch.float64)
    with torch.no_grad():
        for layer in (ours, reference):
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
    y_ours, y_ref = ours(x), reference(x)
    y_numpy = batch_norm_forward(x.numpy(), gamma.numpy(), beta.numpy(), 1e-5)[0]
    ours.eval()
    reference.eval()
    x_new = torch.randn(shape, generator=generator, dtype=torch.float64)

    def gap(a: Tensor | np.ndarray, b: Tensor) -> float:
        a = torch.as_tensor(a)
        return float((a.detach() - b.detach()).abs().max())

    return {
        "functional, training output": gap(y_numpy, y_ref),
        "BatchNorm, training output": gap(y_ours, y_ref),
        "BatchNorm, running_mean": gap(ours.running_mean, reference.running_mean),
        "BatchNorm, running_var": gap(ours.running_var, reference.running_var),
        "BatchNorm, eval output": gap(ours(x_new), reference(x_new)),
    }


def per_channel_moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (biased) standard deviation over every axis but 1."""
    axes = reduction_axes(y.ndim)
    return y.mean(axis=axes), y.std(axis=axes)
