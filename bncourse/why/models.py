"""The networks and the training loop of the chapter on why BN helps.

* :func:`make_net`: ``Linear -> norm -> ReLU`` blocks and a last ``Linear``, where the norm is
  torch's BN, nothing, or :class:`NoisyBatchNorm`; every linear weight can be multiplied by an
  initial scale, the last layer's included or not.
* :class:`NoisyBatchNorm`: BN followed, in training mode, by a per-channel shift and scale
  drawn afresh at every step (the noisy BN of Santurkar et al., 2018).
* :func:`train_sgd`: plain mini-batch SGD on the cross-entropy, which stops and says so when
  the loss diverges, and records the loss and gradient norm of every step.

Everything is float64 (:data:`bncourse.training.DTYPE`) and seeded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..training import DTYPE, DigitsData, accuracy, minibatches, torch_threads

__all__ = ["NORMS", "WIDTHS", "NoisyBatchNorm", "make_net", "linear_layers", "TrainRun",
           "train_sgd", "DIVERGED_LOSS", "NOISE", "provenance", "write_json"]

#: The normalizations a network can have after each hidden linear layer.
NORMS = ("bn", "none", "noisy")

#: Hidden widths of the chapter's digits network (four hidden layers).
WIDTHS = (64, 64, 64, 64)

#: The noise of :class:`NoisyBatchNorm` in the chapter: shifts up to 0.5, scales up to 1.5.
NOISE = (0.5, 1.5)

#: A training loss above this (and above ten times the first step's, or not finite) counts as
#: diverged: ten times the loss of a uniform guess over ten classes, ln 10.
DIVERGED_LOSS = 10 * math.log(10)


class NoisyBatchNorm(nn.BatchNorm1d):
    """BN whose training-mode output is shifted and scaled per channel by fresh noise each step.

    At every training-mode forward pass each channel ``c`` draws a shift
    ``m_c ~ U(-shift, shift)`` and a scale ``s_c ~ U(1, scale)``, and every example's output is
    ``s_c * y + m_c`` with ``y`` BN's output: the next layer receives a distribution whose
    mean and spread change at every step, by more than BN removes. In eval mode the layer is
    torch's BN. The noise comes from its own seeded generator, so two runs with the same seed
    draw the same noise.
    """

    def __init__(self, num_features: int, *, shift: float = 0.5, scale: float = 1.5,
                 seed: int = 0, dtype: torch.dtype = DTYPE) -> None:
        super().__init__(num_features, dtype=dtype)
        if shift < 0 or scale < 1:
            raise ValueError(f"NoisyBatchNorm: shift must be >= 0 and scale >= 1, got "
                             f"shift={shift}, scale={scale}")
        self.shift, self.scale = float(shift), float(scale)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        c = self.num_features
        m = (2 * torch.rand(c, generator=self.generator, dtype=y.dtype) - 1) * self.shift
        s = 1 + torch.rand(c, generator=self.generator, dtype=y.dtype) * (self.scale - 1)
        return y * s + m


def make_net(norm: str = "bn", *, widths: Sequence[int] = WIDTHS, in_features: int = 64,
             classes: int = 10, init_scale: float = 1.0, scale_last: bool = True,
             seed: int = 0, noise: tuple[float, float] = NOISE,
             dtype: torch.dtype = DTYPE) -> nn.Sequential:
    """``Linear -> norm -> ReLU`` per hidden width, then a last ``Linear``.

    ``norm`` is ``"bn"`` (``torch.nn.BatchNorm1d``), ``"none"`` or ``"noisy"``
    (:class:`NoisyBatchNorm` with ``noise = (shift, scale)``). The linear layers use torch's
    default initialization under ``torch.manual_seed(seed)``, the same for every ``norm`` of
    a seed; then every weight is multiplied by ``init_scale`` (the last layer's only when
    ``scale_last``). The biases keep their default.
    """
    if norm not in NORMS:
        raise ValueError(f"make_net: norm must be one of {NORMS}, got {norm!r}")
    if not (init_scale > 0 and math.isfinite(init_scale)):
        raise ValueError(f"make_net: init_scale must be positive and finite, got {init_scale}")
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"make_net: widths must be positive, got {list(widths)}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = in_features
    for i, width in enumerate(widths):
        layers.append(nn.Linear(previous, width, dtype=dtype))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(width, dtype=dtype))
        elif norm == "noisy":
            layers.append(NoisyBatchNorm(width, shift=noise[0], scale=noise[1],
                                         seed=1000 * seed + i, dtype=dtype))
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, classes, dtype=dtype))
    model = nn.Sequential(*layers)
    linears = linear_layers(model)
    with torch.no_grad():
        for lin in linears if scale_last else linears[:-1]:
            lin.weight.mul_(init_scale)
    return model


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The network's linear layers, first to last."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@dataclass
class TrainRun:
    """One SGD run: per-step loss and gradient norm, whether it diverged, final accuracy.

    ``losses[t]`` and ``grad_norms[t]`` are the mini-batch loss and the norm of the whole
    gradient at step ``t`` (before that step's update). A diverged run stops at the step whose
    loss is not finite or exceeds both :data:`DIVERGED_LOSS` and ten times the first step's
    loss (a network whose initial loss is large has not diverged by starting there); its
    accuracy is then that of a guess, 0.1.
    """

    losses: np.ndarray
    grad_norms: np.ndarray
    diverged: bool
    accuracy: float
    model: nn.Module = field(repr=False)


def train_sgd(model: nn.Module, data: DigitsData, *, lr: float, epochs: int = 10,
              batch_size: int = 64, seed: int = 0, threads: int | None = 1,
              invariant_lr: float | None = None) -> TrainRun:
    """Plain mini-batch SGD (no momentum, no decay) on the cross-entropy.

    The mini-batches come from ``seed`` (the same batches for every network of a seed);
    ``accuracy`` is measured on ``data.x_test``/``y_test`` in eval mode (pass a validation
    split from :func:`bncourse.training.split_validation` to choose hyperparameters).
    ``invariant_lr``, when given, is the rate of the weights of every linear layer but the
    last (the ones a normalization follows, whose scale BN ignores); every other parameter
    trains at ``lr``.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train_sgd: lr must be positive and finite, got {lr}")
    if invariant_lr is not None and not (invariant_lr > 0 and math.isfinite(invariant_lr)):
        raise ValueError(f"train_sgd: invariant_lr must be positive and finite, got "
                         f"{invariant_lr}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"train_sgd: epochs must be >= 1 and batch_size >= 2, got "
                         f"epochs={epochs}, batch_size={batch_size}")
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    if invariant_lr is None:
        opt = torch.optim.SGD(params, lr=lr)
    else:
        invariant = {id(lin.weight) for lin in linear_layers(model)[:-1]}
        opt = torch.optim.SGD([
            {"params": [p for p in params if id(p) in invariant], "lr": invariant_lr},
            {"params": [p for p in params if id(p) not in invariant], "lr": lr}])
    gen = torch.Generator().manual_seed(seed)
    losses, norms = [], []
    diverged = False
    model.train()
    with torch_threads(threads):
        for _ in range(epochs):
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                loss = loss_fn(model(xb), yb)
                value = float(loss.detach())
                if not losses:
                    limit = max(DIVERGED_LOSS, 10 * value)
                if not math.isfinite(value) or value > limit:
                    diverged = True
                    losses.append(value if math.isfinite(value) else math.inf)
                    norms.append(math.inf)
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in params))))
                losses.append(value)
                opt.step()
            if diverged:
                break
        if not diverged and not all(torch.isfinite(p).all() for p in model.parameters()):
            diverged = True
        acc = 0.1 if diverged else accuracy(model, data.x_test, data.y_test)
    return TrainRun(np.array(losses), np.array(norms), diverged, acc, model)


def provenance(command: str, runs: str, seconds: float,
               load_before: float | None) -> dict[str, object]:
    """How a stored file was made: command, runs, machine and versions, load, seconds."""
    import os

    from ..bench import machine_info
    from ..training import _load_average

    return {"command": command, "runs": runs, "machine": machine_info(), "threads_per_run": 1,
            "load_average": [load_before, _load_average()], "seconds": round(seconds),
            "environment": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}


def write_json(path: object, record: dict[str, object]) -> None:
    """Write ``record`` as indented JSON (NumPy arrays as lists)."""
    import json

    def plain(value: object) -> object:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"write_json: cannot store a {type(value).__name__}")

    with open(path, "w") as f:  # type: ignore[arg-type]
        json.dump(record, f, indent=1, default=plain)
        f.write("\n")
