"""Claim 1, "BN reduces internal covariate shift": noisy BN, and the gradient-based measure.

* :func:`noisy_bn_comparison`: BN, noisy BN (:class:`~bncourse.why.models.NoisyBatchNorm`) and
  no normalization, trained from the same seeds; test accuracy of each.
* :func:`input_shift`: how far the mean of what one layer receives moves from one step to the
  next, in units of its spread, on a fixed batch (the shift the noise adds, measured).
* :func:`ics_measure`: Santurkar et al.'s measure of internal covariate shift for one layer:
  the change of its weight gradient caused by the gradient step of the layers before it, as
  the l2 distance (also relative to the gradient's norm) and the cosine of the two gradients.
* :func:`ics_over_training`: that measure for every layer at steps along a training run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..training import DigitsData, minibatches, torch_threads
from .models import NOISE, linear_layers, make_net, train_sgd

__all__ = ["ICS", "ics_measure", "ics_over_training", "noisy_bn_comparison", "input_shift",
           "LR", "CHOSEN", "ACCURACY_SEEDS", "STEPS", "PROBE_EVERY", "SHIFT_STEPS",
           "SHIFT_LAYER", "SEEDS", "ICS_FILE", "measure_all", "accuracy_comparison", "main"]


@dataclass(frozen=True)
class ICS:
    """The change of a layer's weight gradient when the layers before it take their step."""

    l2: float
    relative: float
    cosine: float


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y)


def ics_measure(model: nn.Sequential, x: Tensor, y: Tensor, layer: int, lr: float, *,
                loss_fn: Callable[[Tensor, Tensor], Tensor] = _cross_entropy) -> ICS:
    """Santurkar et al.'s internal covariate shift of linear layer ``layer`` (0 = first).

    ``G`` is the gradient of the loss on ``(x, y)`` with respect to the layer's weight;
    ``G'`` the same gradient after every parameter of the modules *before* that layer has
    taken one gradient step of size ``lr`` on the same batch (the layer itself and those after
    it unchanged). Returns ``||G - G'||``, that divided by ``||G||``, and the cosine of ``G``
    and ``G'``. The model is not changed (the measure works on a copy, in training mode).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError("ics_measure: the model must be an nn.Sequential")
    linears = linear_layers(model)
    if not 0 <= layer < len(linears):
        raise ValueError(f"ics_measure: layer must be in 0..{len(linears) - 1}, got {layer}")
    if lr < 0 or not math.isfinite(lr):
        raise ValueError(f"ics_measure: lr must be finite and >= 0, got {lr}")
    net = copy.deepcopy(model)
    net.train()
    target = linear_layers(net)[layer]
    position = next(i for i, m in enumerate(net) if m is target)
    before = [p for m in list(net)[:position] for p in m.parameters()]
    loss = loss_fn(net(x), y)
    grads = torch.autograd.grad(loss, [target.weight, *before])
    g = grads[0]
    with torch.no_grad():
        for p, gp in zip(before, grads[1:], strict=True):
            p.sub_(lr * gp)
    g2 = torch.autograd.grad(loss_fn(net(x), y), target.weight)[0]
    norm, norm2 = float(g.norm()), float(g2.norm())
    l2 = float((g - g2).norm())
    cosine = float((g * g2).sum()) / (norm * norm2) if norm > 0 and norm2 > 0 else math.nan
    return ICS(l2, l2 / norm if norm > 0 else math.nan, cosine)


def ics_over_training(norm: str, data: DigitsData, *, lr: float, seed: int, steps: int,
                      probe_every: int, batch_size: int = 64,
                      widths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Train ``make_net(norm)`` with SGD and measure :func:`ics_measure` for every layer.

    Every ``probe_every`` steps (step 0 included), on that step's mini-batch before its
    update. Returns ``{"steps": (P,), "relative": (P, L), "cosine": (P, L), "l2": (P, L)}``
    for ``P`` probes and the network's ``L`` linear layers.
    """
    kwargs = {} if widths is None else {"widths": widths}
    model = make_net(norm, seed=seed, **kwargs)
    n_layers = len(linear_layers(model))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    probes, rel, cos, l2 = [], [], [], []
    step = 0
    model.train()
    with torch_threads(1):
        while step < steps:
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
                if step >= steps:
                    break
                if step % probe_every == 0:
                    ms = [ics_measure(model, xb, yb, k, lr) for k in range(n_layers)]
                    probes.append(step)
                    rel.append([m.relative for m in ms])
                    cos.append([m.cosine for m in ms])
                    l2.append([m.l2 for m in ms])
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    return {"steps": np.array(probes), "relative": np.array(rel), "cosine": np.array(cos),
            "l2": np.array(l2)}


def noisy_bn_comparison(data: DigitsData, *, lrs: dict[str, float], seeds: Sequence[int],
                        epochs: int = 10, noise: tuple[float, float] = NOISE
                        ) -> dict[str, np.ndarray]:
    """Test accuracy of ``make_net(norm)`` for each norm in ``lrs``, one run per seed.

    ``lrs`` maps a norm (``"bn"``, ``"noisy"``, ``"none"``) to its learning rate. The runs of
    a seed share their initial linear weights and their mini-batches.
    """
    out = {}
    for norm, lr in lrs.items():
        out[norm] = np.array([
            train_sgd(make_net(norm, seed=s, noise=noise), data, lr=lr, epochs=epochs,
                      seed=s).accuracy for s in seeds])
    return out


@torch.no_grad()
def input_shift(model: nn.Sequential, layer: int, x_probe: Tensor, data: DigitsData, *,
                lr: float, steps: int, seed: int, batch_size: int = 64) -> float:
    """Mean step-to-step move of the per-channel mean of linear layer ``layer``'s input.

    Trains ``model`` with SGD for ``steps`` steps; before each step it passes the fixed batch
    ``x_probe`` in training mode (noise included, for noisy BN) and records the per-channel
    mean and standard deviation of what linear layer ``layer`` receives. Returns the mean over
    steps and channels of ``|mean_t - mean_{t-1}| / std_{t-1}``.
    """
    target = linear_layers(model)[layer]
    position = next(i for i, m in enumerate(model) if m is target)
    head = model[:position]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    moves, previous = [], None
    step = 0
    model.train()
    while step < steps:
        for xb, yb in minibatches(data.x_train, data.y_train, batch_size, gen):
            if step >= steps:
                break
            h = head(x_probe)
            mean, std = h.mean(0), h.std(0)
            if previous is not None:
                ok = previous[1] > 0
                moves.append(float(((mean - previous[0]).abs()[ok] / previous[1][ok]).mean()))
            previous = (mean, std)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            step += 1
    return float(np.mean(moves))


#: The rate of the measured runs (the plain network's chosen rate, as in the landscape).
LR = 0.3

#: Steps of a run whose covariate shift is measured, a probe every so many steps; steps and
#: layer (the third linear layer) of the input-shift measurement.
STEPS, PROBE_EVERY, SHIFT_STEPS, SHIFT_LAYER = 800, 100, 200, 2

#: Seeds of the stored measurements, and of the accuracy comparison (the effect is small).
SEEDS = (100, 101, 102, 103, 104)
ACCURACY_SEEDS = tuple(range(100, 110))

#: Each network's rate in the accuracy comparison, chosen on the validation split
#: (``why_sweeps.json``, checked in ``tests/test_why.py``).
CHOSEN = {"bn": 0.1, "noisy": 0.1, "none": 0.3}

#: Where :func:`main` writes the measurements and the chapter reads them.
ICS_FILE = Path(__file__).resolve().parents[2] / "book" / "data" / "why_ics.json"


def measure_all(data: DigitsData, seeds: Sequence[int], *, steps: int = STEPS,
                probe_every: int = PROBE_EVERY, shift_steps: int = SHIFT_STEPS
                ) -> dict[str, object]:
    """Both measurements of the stored file for ``seeds`` (see :func:`main`)."""
    ics = {}
    for norm in ("bn", "none"):
        runs = [ics_over_training(norm, data, lr=LR, seed=s, steps=steps,
                                  probe_every=probe_every) for s in seeds]
        ics[norm] = {k: [r[k].tolist() for r in runs]
                     for k in ("steps", "relative", "cosine", "l2")}
    probe = data.x_test[:256]
    shift = {norm: [input_shift(make_net(norm, seed=s), SHIFT_LAYER, probe, data, lr=LR,
                                steps=shift_steps, seed=s) for s in seeds]
             for norm in ("bn", "noisy", "none")}
    return {"ics": ics, "input_shift": shift}


def accuracy_comparison(data: DigitsData, seeds: Sequence[int] = ACCURACY_SEEDS,
                        epochs: int = 10) -> dict[str, list[float]]:
    """Test accuracy of BN, noisy BN and the plain network at their chosen rates, and of all
    three at the common rate 0.1 (``"<norm>@0.1"``)."""
    out = {k: v.tolist() for k, v in noisy_bn_comparison(data, lrs=CHOSEN, seeds=seeds,
                                                          epochs=epochs).items()}
    out["none@0.1"] = noisy_bn_comparison(data, lrs={"none": 0.1}, seeds=seeds,
                                          epochs=epochs)["none"].tolist()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Measure internal covariate shift both ways along training runs and store it."""
    import argparse
    import time

    from ..training import _load_average, load_digits_data
    from .models import provenance, write_json

    parser = argparse.ArgumentParser(prog="python -m bncourse.why.covariate",
                                     description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(ICS_FILE),
                        help="where to write the JSON (default: book/data/why_ics.json)")
    args = parser.parse_args(argv)
    load_before = _load_average()
    start = time.perf_counter()
    data = load_digits_data()
    record = measure_all(data, SEEDS)
    record["accuracy"] = accuracy_comparison(data)
    seconds = time.perf_counter() - start
    record.update({
        "lr": LR, "steps": STEPS, "probe_every": PROBE_EVERY, "shift_steps": SHIFT_STEPS,
        "shift_layer": SHIFT_LAYER, "seeds": list(SEEDS), "batch_size": 64, "noise": list(NOISE),
        "accuracy_seeds": list(ACCURACY_SEEDS), "chosen": CHOSEN, "epochs": 10,
        "provenance": provenance(
            "python -m bncourse.why.covariate",
            f"BN and plain networks x {len(SEEDS)} seeds, {STEPS} SGD steps, every layer "
            f"measured every {PROBE_EVERY} steps; input shift of 3 networks x {len(SEEDS)} "
            f"seeds over {SHIFT_STEPS} steps; test accuracy of 4 arms x "
            f"{len(ACCURACY_SEEDS)} seeds, 10 epochs each; one thread", seconds, load_before),
    })
    write_json(args.path, record)
    for norm, r in record["ics"].items():  # type: ignore[union-attr]
        print(norm, "median relative change", np.round(np.median(r["relative"], axis=(0, 1)), 3),
              "median cosine", np.round(np.median(r["cosine"], axis=(0, 1)), 3))
    print("test accuracy", {k: np.round(np.mean(v), 4) for k, v in record["accuracy"].items()})
    print("input shift", {k: np.round(v, 3) for k, v in record["input_shift"].items()})


if __name__ == "__main__":
    main()
