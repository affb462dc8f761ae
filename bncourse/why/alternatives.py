"""Claim 8, without BN: what replaces it in a residual network, and at which learning rates.

Four residual MLPs of :data:`DEPTH` blocks are trained on the digits with SGD and momentum
(:data:`VARIANTS`): the pre-activation block with BN, ``h + W ReLU(BN(h))``; SkipInit (De and
Smith 2020), ``h + alpha W ReLU(h)`` with a learned scalar ``alpha`` that starts at 0, so that
every block is the identity at initialization; a normalizer-free block in the manner of Brock
et al. (2021), ``h + alpha W_hat gamma ReLU(h / beta_l)`` with scaled weight standardization
(:class:`WSLinear`) and adaptive gradient clipping (:func:`adaptive_gradient_clip_`); and the
same residual block with nothing (no BN, no rescaling). The validation accuracy of each over
a grid of learning rates says how close each gets to BN and where; the stored sweep is written
by ``python -m bncourse.why.alternatives``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..training import DTYPE, DigitsData, accuracy, minibatches, torch_threads

__all__ = [
    "VARIANTS",
    "DEPTH",
    "LR_GRID",
    "WSLinear",
    "ResidualMLP",
    "adaptive_gradient_clip_",
    "train_residual",
    "sweep",
    "DATA_FILE",
]

VARIANTS = ("bn", "skipinit", "ws_agc", "none")
DEPTH = 8
WIDTH = 64
EPOCHS = 15
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: AGC's threshold on |gradient| / |weight| per unit (Brock et al. use 0.01 to 0.16).
CLIPPING = 0.04
#: The normalizer-free block's branch scale (Brock et al.'s alpha).
NF_ALPHA = 0.2
#: gamma for ReLU: 1 / std(ReLU(z)), z ~ N(0, 1), so that the branch input has unit variance.
RELU_GAMMA = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))


class WSLinear(nn.Linear):
    """A linear layer whose weight is standardized per output unit before use.

    $\\hat W_{ij} = g\\,(W_{ij} - \\mu_i) / (\\sigma_i \\sqrt{n})$ with $\\mu_i, \\sigma_i$ the
    mean and (biased) standard deviation of row $i$ and $n$ the fan-in: each row of
    $\\hat W$ has mean 0 and norm $g$ (``gain``), whatever $W$ is.
    """

    def __init__(self, in_features: int, out_features: int, *, gain: float = 1.0,
                 eps: float = 1e-8, **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.gain, self.eps = gain, eps

    def standardized_weight(self) -> Tensor:
        w = self.weight
        mean = w.mean(dim=1, keepdim=True)
        var = w.var(dim=1, unbiased=False, keepdim=True)
        return self.gain * (w - mean) / torch.sqrt(var * w.shape[1] + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.standardized_weight(), self.bias)


@torch.no_grad()
def adaptive_gradient_clip_(params: Iterable[nn.Parameter], clipping: float,
                            eps: float = 1e-3) -> None:
    """Brock et al.'s adaptive gradient clipping, in place, unit by unit.

    For each row $i$ (an output unit; a vector is one unit per entry) of a parameter $W$
    with gradient $G$: when $\\|G_i\\| / \\max(\\|W_i\\|, \\epsilon) > \\lambda$ (``clipping``),
    $G_i$ is scaled to norm $\\lambda \\max(\\|W_i\\|, \\epsilon)$; otherwise it is kept.
    """
    if clipping <= 0:
        raise ValueError(f"clipping must be positive; got {clipping}")
    for p in params:
        if p.grad is None:
            continue
        w = p.detach().reshape(p.shape[0], -1) if p.ndim > 1 else p.detach().reshape(-1, 1)
        g = p.grad.reshape(w.shape)
        w_norm = w.norm(dim=1, keepdim=True).clamp_min(eps)
        g_norm = g.norm(dim=1, keepdim=True)
        limit = clipping * w_norm
        scale = torch.where(g_norm > limit, limit / g_norm.clamp_min(1e-300),
                            torch.ones_like(g_norm))
        p.grad.copy_((g * scale).reshape(p.grad.shape))


class ResidualMLP(nn.Module):
    """Stem ``Linear(64, width)``, ``depth`` residual blocks of ``variant``, readout."""

    def __init__(self, variant: str, depth: int = DEPTH, width: int = WIDTH, seed: int = 0,
                 dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
        torch.manual_seed(seed)
        self.variant = variant
        self.stem = nn.Linear(64, width, dtype=dtype)
        if variant == "ws_agc":
            self.branches = nn.ModuleList(WSLinear(width, width, dtype=dtype)
                                          for _ in range(depth))
        else:
            self.branches = nn.ModuleList(nn.Linear(width, width, dtype=dtype)
                                          for _ in range(depth))
            for b in self.branches:
                nn.init.normal_(b.weight, 0.0, math.sqrt(2.0 / width))
                nn.init.zeros_(b.bias)
        self.norms = nn.ModuleList(nn.BatchNorm1d(width, dtype=dtype) if variant == "bn"
                                   else nn.Identity() for _ in range(depth))
        if variant == "skipinit":
            self.alphas = nn.Parameter(torch.zeros(depth, dtype=dtype))
        self.head = nn.Linear(width, 10, dtype=dtype)

    def block(self, index: int, h: Tensor) -> Tensor:
        """The output of block ``index`` (0-based) for the stream ``h``."""
        branch = self.branches[index]
        if self.variant == "skipinit":
            return h + self.alphas[index] * branch(torch.relu(h))
        if self.variant == "ws_agc":
            beta = math.sqrt(1.0 + index * NF_ALPHA**2)       # expected std of the stream
            return h + NF_ALPHA * branch(RELU_GAMMA * torch.relu(h / beta))
        return h + branch(torch.relu(self.norms[index](h)))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for index in range(len(self.branches)):
            h = self.block(index, h)
        return self.head(h)


def train_residual(variant: str, data: DigitsData, *, lr: float, seed: int,
                   epochs: int = EPOCHS, batch_size: int = 64) -> tuple[ResidualMLP, bool]:
    """SGD with momentum 0.9 on the cross-entropy; returns the model and whether the training
    loss stayed finite (a run that diverges stops there)."""
    model = ResidualMLP(variant, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    clipped = [p for name, p in model.named_parameters() if not name.startswith("head")]
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(7000 + seed)
    model.train()
    with torch_threads(1):
        for _ in range(epochs):
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                if not torch.isfinite(loss):
                    return model, False
                loss.backward()
                if variant == "ws_agc":
                    adaptive_gradient_clip_(clipped, CLIPPING)
                optimizer.step()
    return model, True


def _score(model: nn.Module, finite: bool, x: Tensor, y: Tensor) -> float:
    """Accuracy, or chance (0.1) for a run that diverged."""
    if not finite:
        return 0.1
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(x)
        model.train(was)
    if not torch.isfinite(out).all():
        return 0.1
    return accuracy(model, x, y)


def sweep(data: DigitsData, variants: Sequence[str] = VARIANTS,
          lrs: Sequence[float] = LR_GRID, seeds: Sequence[int] = range(3)) -> dict:
    """Accuracy on ``data``'s test part (a validation split, when selecting) per variant,
    rate and seed: ``out[variant][i][j]`` for ``lrs[i]`` and ``seeds[j]``; a diverged run
    scores chance."""
    out = {}
    for variant in variants:
        out[variant] = [[_score(*train_residual(variant, data, lr=lr, seed=s),
                                data.x_test, data.y_test) for s in seeds] for lr in lrs]
    return out


DATA_FILE = (Path(__file__).resolve().parent.parent.parent / "book" / "data"
             / "why_mechanisms_alternatives.json")
FINAL_SEEDS = tuple(range(10))


def main() -> None:
    """Validation sweep over the rates, then test accuracy at each variant's chosen rate."""
    import platform
    import time

    from ..training import load_digits_data, split_validation

    start = time.perf_counter()
    data = load_digits_data()
    val = split_validation(data, fraction=0.2, seed=0)
    seeds = (0, 1, 2)
    validation = sweep(val, seeds=seeds)
    chosen = {v: float(LR_GRID[int(np.argmax(np.mean(a, axis=1)))])
              for v, a in validation.items()}
    test = {v: [_score(*train_residual(v, data, lr=chosen[v], seed=s),
                       data.x_test, data.y_test) for s in FINAL_SEEDS] for v in VARIANTS}
    out = {
        "lrs": list(LR_GRID), "seeds": list(seeds), "validation": validation,
        "chosen": chosen, "final_seeds": list(FINAL_SEEDS), "test": test,
        "provenance": {
            "command": "python -m bncourse.why.alternatives",
            "runs": (f"{len(VARIANTS)} variants x {len(LR_GRID)} learning rates x "
                     f"{len(seeds)} seeds (validation), then {len(VARIANTS)} x "
                     f"{len(FINAL_SEEDS)} seeds (test)"),
            "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "threads_per_run": 1, "seconds": round(time.perf_counter() - start),
        },
    }
    DATA_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(chosen))


if __name__ == "__main__":
    main()
