"""Claim 4, "BN smooths the loss landscape": Santurkar et al.'s three measurements.

At a point ``theta`` of a training run, with ``g`` the gradient of the mini-batch loss, the
network is moved along the gradient to ``theta - eta * g`` for every step size ``eta`` of a
set, and

* the **loss range** is the largest minus the smallest loss over those points;
* the **gradient predictiveness** is the largest ``||g - g(theta - eta g)||``, how far the
  gradient moved (a small value: the gradient predicts the gradient a step away);
* the **effective beta-smoothness** is the largest ``||g - g(theta - eta g)|| / ||eta g||``,
  the gradient's change per distance moved, a local Lipschitz constant of the gradient.

On a quadratic ``L = theta^T A theta / 2`` the three are exact:
``L(theta - eta g) = L - eta g^T g + eta^2 g^T A g / 2`` and ``g(theta - eta g) - g = -eta A g``,
so the beta-smoothness is ``||A g|| / ||g||`` (the largest eigenvalue of ``A`` when ``g`` is
its eigenvector); ``tests/test_why.py`` checks exactly that.

* :func:`probe`: the three at one point of a model on one batch.
* :func:`landscape_over_training`: the three along an SGD run of the digits network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..training import DigitsData, minibatches, torch_threads
from .models import make_net

__all__ = ["Probe", "probe", "landscape_over_training", "STEP_FACTORS", "LR", "STEPS",
           "PROBE_EVERY", "SEEDS", "LANDSCAPE_FILE", "summarize", "trajectories", "main"]


@dataclass(frozen=True)
class Probe:
    """The loss range, gradient predictiveness and beta-smoothness at one point."""

    losses: np.ndarray
    grad_changes: np.ndarray
    step_sizes: np.ndarray
    grad_norm: float

    @property
    def loss_range(self) -> float:
        return float(self.losses.max() - self.losses.min())

    @property
    def predictiveness(self) -> float:
        return float(self.grad_changes.max())

    @property
    def beta(self) -> float:
        return float((self.grad_changes / (self.step_sizes * self.grad_norm)).max())


def probe(model: nn.Module, loss_of: Callable[[nn.Module], Tensor],
          step_sizes: Sequence[float]) -> Probe:
    """Move a copy of ``model`` along its gradient by each step size; measure the three.

    ``loss_of(module)`` returns the scalar loss to differentiate (for a network, the loss on a
    fixed mini-batch in training mode). The model itself is not changed.
    """
    etas = np.asarray(step_sizes, dtype=np.float64)
    if etas.ndim != 1 or etas.size < 2 or not np.all(etas > 0):
        raise ValueError(f"probe: step_sizes must be at least two positive numbers, got "
                         f"{list(step_sizes)}")
    net = copy.deepcopy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    g = torch.autograd.grad(loss_of(net), params)
    start = [p.detach().clone() for p in params]
    g_norm = float(torch.sqrt(sum((gi ** 2).sum() for gi in g)))
    losses, changes = [], []
    for eta in etas:
        with torch.no_grad():
            for p, p0, gi in zip(params, start, g, strict=True):
                p.copy_(p0 - eta * gi)
        loss = loss_of(net)
        g2 = torch.autograd.grad(loss, params)
        losses.append(float(loss.detach()))
        change = sum(((a - b) ** 2).sum() for a, b in zip(g, g2, strict=True))
        changes.append(float(torch.sqrt(change)))
    return Probe(np.array(losses), np.array(changes), etas, g_norm)


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x), y)


def landscape_over_training(norm: str, data: DigitsData, *, lr: float, seed: int, steps: int,
                            probe_every: int, step_sizes: Sequence[float],
                            batch_size: int = 64) -> dict[str, np.ndarray]:
    """Train ``make_net(norm)`` with SGD at ``lr``; :func:`probe` every ``probe_every`` steps.

    Each probe uses that step's mini-batch, before the update. Returns arrays over the probes:
    ``steps``, ``loss_range``, ``predictiveness``, ``beta``, ``grad_norm``.
    """
    model = make_net(norm, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {k: [] for k in
                                   ("steps", "loss_range", "predictiveness", "beta", "grad_norm")}
    step = 0
    model.train()
    with torch_threads(1):
        while step < steps:
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                if step >= steps:
                    break
                if step % probe_every == 0:
                    p = probe(model, lambda m, xb=xb, yb=yb: _loss(m, xb, yb), step_sizes)
                    out["steps"].append(step)
                    out["loss_range"].append(p.loss_range)
                    out["predictiveness"].append(p.predictiveness)
                    out["beta"].append(p.beta)
                    out["grad_norm"].append(p.grad_norm)
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    return {k: np.array(v) for k, v in out.items()}


#: The step sizes of a probe, as multiples of the training rate.
STEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)

#: The rate both networks train with along the measured trajectory: the plain network's
#: chosen rate (``why_sweeps.json``), at which the BN network trains as well.
LR = 0.3

#: Steps of a measured trajectory, and a probe every so many steps.
STEPS, PROBE_EVERY = 800, 50

#: Seeds of the stored trajectories.
SEEDS = (100, 101, 102, 103, 104)

#: The three measurements, as :func:`landscape_over_training` names them.
MEASURES = ("loss_range", "predictiveness", "beta")

#: Where :func:`main` writes the trajectories and the chapter reads them.
LANDSCAPE_FILE = Path(__file__).resolve().parents[2] / "book" / "data" / "why_landscape.json"


def trajectories(data: DigitsData, seeds: Sequence[int], *, steps: int = STEPS,
                 probe_every: int = PROBE_EVERY, lr: float = LR
                 ) -> dict[str, dict[str, list[list[float]]]]:
    """``{norm: {measure: [[value per probe] per seed]}}`` for BN and the plain network."""
    etas = [lr * f for f in STEP_FACTORS]
    out: dict[str, dict[str, list[list[float]]]] = {}
    for norm in ("bn", "none"):
        runs = [landscape_over_training(norm, data, lr=lr, seed=s, steps=steps,
                                        probe_every=probe_every, step_sizes=etas)
                for s in seeds]
        out[norm] = {k: [r[k].tolist() for r in runs]
                     for k in ("steps", *MEASURES, "grad_norm")}
    return out


def summarize(values: Sequence[Sequence[float]], how: str) -> np.ndarray:
    """One number per seed from its probes: ``"median"`` or ``"max"`` over the trajectory."""
    a = np.asarray(values, dtype=np.float64)
    if how == "median":
        return np.median(a, axis=1)
    if how == "max":
        return a.max(axis=1)
    raise ValueError(f"summarize: how must be 'median' or 'max', got {how!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the landscape along the trajectories of both networks and store it."""
    import argparse
    import time

    from ..training import _load_average, load_digits_data
    from .models import provenance, write_json

    parser = argparse.ArgumentParser(prog="python -m bncourse.why.landscape",
                                     description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(LANDSCAPE_FILE),
                        help="where to write the JSON (default: book/data/why_landscape.json)")
    args = parser.parse_args(argv)
    load_before = _load_average()
    start = time.perf_counter()
    runs = trajectories(load_digits_data(), SEEDS)
    seconds = time.perf_counter() - start
    write_json(args.path, {
        "lr": LR, "step_factors": list(STEP_FACTORS), "steps": STEPS,
        "probe_every": PROBE_EVERY, "seeds": list(SEEDS), "batch_size": 64,
        "trajectories": runs,
        "provenance": provenance(
            "python -m bncourse.why.landscape",
            f"2 networks x {len(SEEDS)} seeds, {STEPS} SGD steps each, a probe every "
            f"{PROBE_EVERY} steps, one thread", seconds, load_before),
    })
    for norm, r in runs.items():
        print(norm, {k: np.round(np.median(summarize(r[k], "median")), 3) for k in MEASURES})


if __name__ == "__main__":
    main()
