"""Claim 5, "BN stabilizes gradients": explosion at initialization, and what training does to it.

Chapter 4 shows that a deep plain network with BN after every layer has, at initialization,
gradients that grow geometrically from the output towards the input (Yang et al. 2019). Here
the same kind of network is trained on the digits, and the ratio of the first hidden layer's
weight gradient to the last one's is followed over the first steps of training, for the
plain network and for a pre-activation residual one (De and Smith 2020). The ratio falls by
more than a decade within the first steps. The first layer's weight norm grows in those steps,
and a layer followed by BN gets a gradient inversely proportional to its weight's norm, but
that growth is not what removes the explosion: with ``pin_norms=True`` every hidden weight is
rescaled to its initial norm after each step, and the ratio falls as far. The first gradient
itself shrinks as the first steps move the weights away from their random starting point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..training import DTYPE, DigitsData, torch_threads

__all__ = [
    "ARCHITECTURES",
    "DeepNet",
    "layer_weights",
    "gradient_ratio",
    "GradientTrace",
    "gradient_trace",
]

#: ``"plain"``: ``Linear -> BN -> ReLU`` blocks; ``"residual"``: ``h + Linear(ReLU(BN(h)))``.
ARCHITECTURES = ("plain", "residual")


class DeepNet(nn.Module):
    """An input layer, ``depth`` hidden blocks of ``width`` units, and a linear readout.

    ``"plain"`` blocks are ``Linear -> BN -> ReLU``; ``"residual"`` blocks are the
    pre-activation ``h + Linear(ReLU(BN(h)))``. Every hidden weight is He-initialized
    ($\\mathcal N(0, 2/\\text{width})$, no bias before BN), under ``torch.manual_seed(seed)``.
    """

    def __init__(self, depth: int, width: int = 64, *, architecture: str = "plain",
                 in_features: int = 64, classes: int = 10, seed: int = 0,
                 dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1; got {depth}")
        torch.manual_seed(seed)
        self.architecture = architecture
        self.stem = nn.Linear(in_features, width, dtype=dtype)
        self.linears = nn.ModuleList(nn.Linear(width, width, bias=False, dtype=dtype)
                                     for _ in range(depth))
        self.norms = nn.ModuleList(nn.BatchNorm1d(width, dtype=dtype) for _ in range(depth))
        for linear in self.linears:
            nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / width))
        self.head = nn.Linear(width, classes, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for linear, norm in zip(self.linears, self.norms, strict=True):
            if self.architecture == "plain":
                h = torch.relu(norm(linear(h)))
            else:
                h = h + linear(torch.relu(norm(h)))
        return self.head(h)


def layer_weights(model: DeepNet) -> list[nn.Parameter]:
    """The hidden blocks' weights, first to last."""
    return [linear.weight for linear in model.linears]


def gradient_ratio(model: DeepNet) -> float:
    """$\\|\\nabla W_1\\| / \\|\\nabla W_L\\|$ from the gradients stored on ``model``."""
    weights = layer_weights(model)
    if weights[0].grad is None or weights[-1].grad is None:
        raise ValueError("the model has no gradients: call backward() first")
    return float(weights[0].grad.norm() / weights[-1].grad.norm())


@dataclass(frozen=True)
class GradientTrace:
    r"""Per seed (rows) and recorded step (columns): gradient ratio, first layer's weight norm
    over its initial value, the training loss and the first layer's gradient norm
    $\|\nabla W_1\|$. ``steps[j]`` is the number of updates made before column ``j`` was
    measured; ``pinned`` says whether the hidden weights' norms were held at their initial
    values."""

    architecture: str
    depth: int
    steps: tuple[int, ...]
    ratio: np.ndarray
    first_norm_growth: np.ndarray
    loss: np.ndarray
    first_grad: np.ndarray
    pinned: bool = False


def gradient_trace(
    data: DigitsData, *, depth: int = 32, width: int = 64, architecture: str = "plain",
    seeds: Sequence[int] = range(5), steps: Sequence[int] = (0, 1, 2, 5, 10, 50),
    lr: float = 0.1, batch_size: int = 128, pin_norms: bool = False,
) -> GradientTrace:
    """Train :class:`DeepNet` by plain SGD and record the gradient ratio at ``steps``.

    The batch at each step is drawn from the training set with a generator seeded by the
    seed (the same batches for both architectures, and with or without pinning). The loss
    and gradients recorded at step ``k`` are those of the batch that the ``k``-th update then
    uses. With ``pin_norms=True`` every hidden weight is rescaled to its initial Frobenius
    norm after each SGD step, so that no weight norm changes during training.
    """
    steps = tuple(sorted(set(int(s) for s in steps)))
    if steps[0] < 0:
        raise ValueError(f"steps must be non-negative; got {steps}")
    loss_fn = nn.CrossEntropyLoss()
    ratio, growth, losses, first_grads = [], [], [], []
    with torch_threads(1):
        for seed in seeds:
            model = DeepNet(depth, width, architecture=architecture, seed=seed)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(1000 + seed)
            first0 = float(model.linears[0].weight.detach().norm())
            norms0 = [w.detach().norm() for w in layer_weights(model)]
            r_row, g_row, l_row, f_row = [], [], [], []
            for step in range(steps[-1] + 1):
                idx = torch.randint(data.x_train.shape[0], (batch_size,), generator=gen)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
                loss.backward()
                if step in steps:
                    r_row.append(gradient_ratio(model))
                    g_row.append(float(model.linears[0].weight.detach().norm()) / first0)
                    l_row.append(float(loss.detach()))
                    f_row.append(float(model.linears[0].weight.grad.norm()))
                optimizer.step()
                if pin_norms:
                    with torch.no_grad():
                        for weight, norm0 in zip(layer_weights(model), norms0, strict=True):
                            weight.mul_(norm0 / weight.norm())
            ratio.append(r_row)
            growth.append(g_row)
            losses.append(l_row)
            first_grads.append(f_row)
    return GradientTrace(architecture, depth, steps, np.array(ratio), np.array(growth),
                         np.array(losses), np.array(first_grads), pinned=pin_norms)
