"""Claims 2 and 3: "BN allows higher learning rates" and "BN makes training insensitive to
initialization", as sweeps on the digits.

* :func:`lr_sweep`: validation accuracy and divergence of each network over a wide grid of
  SGD learning rates, one run per seed; :func:`largest_trained_rate` and :func:`chosen_rate`
  read it (the chosen rate is the one the other sections of the chapter train with).
* :func:`first_steps`: the loss and the gradient norm of the first steps at one rate: where a
  high rate's trouble starts.
* :func:`init_sweep`: validation accuracy against a multiplier of every initial weight, with
  BN (the last layer scaled too, or kept at its default) and without.
* :func:`main` (``python -m bncourse.why.rates``): both sweeps into
  ``book/data/why_sweeps.json`` with the command, seeds, versions and date.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..training import DigitsData, load_digits_data, split_validation
from .models import make_net, provenance, train_sgd, write_json

__all__ = ["LR_GRID", "INIT_SCALES", "SEEDS", "EPOCHS", "TRAINS_ACCURACY", "INIT_ARMS",
           "SWEEP_FILE", "lr_sweep", "largest_trained_rate", "chosen_rate", "first_steps",
           "init_sweep", "load_sweeps", "main"]

#: The learning-rate grid: four orders of magnitude, by factors of about 3.
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)

#: Multipliers of the initial weights: four orders of magnitude, by factors of 10^(1/2).
INIT_SCALES = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0)

#: Seeds of the stored sweeps.
SEEDS = (100, 101, 102, 103, 104)

#: Epochs of every sweep run (plain SGD, mini-batches of 64).
EPOCHS = 10

#: A rate "trains" when no seed diverges and the mean validation accuracy reaches this.
TRAINS_ACCURACY = 0.9

#: The networks of the initialization sweep: (name, norm, whether the last layer is scaled).
INIT_ARMS = (("bn", "bn", True), ("bn_hidden", "bn", False), ("none", "none", True))

#: Where :func:`main` writes the sweeps and the chapter reads them.
SWEEP_FILE = Path(__file__).resolve().parents[2] / "book" / "data" / "why_sweeps.json"


def lr_sweep(data: DigitsData, norms: Sequence[str], lrs: Sequence[float],
             seeds: Sequence[int], *, epochs: int = EPOCHS) -> dict[str, dict[str, list]]:
    """``{norm: {"accuracy": [[...per seed] per lr], "diverged": [[...] per lr]}}``.

    ``data`` is the validation split (``x_test`` holds the validation examples).
    """
    out = {}
    for norm in norms:
        acc, div = [], []
        for lr in lrs:
            runs = [train_sgd(make_net(norm, seed=s), data, lr=lr, epochs=epochs, seed=s)
                    for s in seeds]
            acc.append([r.accuracy for r in runs])
            div.append([r.diverged for r in runs])
        out[norm] = {"accuracy": acc, "diverged": div}
    return out


def largest_trained_rate(lrs: Sequence[float], accuracy: Sequence[Sequence[float]],
                         diverged: Sequence[Sequence[bool]]) -> float | None:
    """The largest rate at which no seed diverged and the mean accuracy reaches
    :data:`TRAINS_ACCURACY` (None when there is none)."""
    ok = [lr for lr, a, d in zip(lrs, accuracy, diverged, strict=True)
          if not any(d) and float(np.mean(a)) >= TRAINS_ACCURACY]
    return max(ok) if ok else None


def chosen_rate(lrs: Sequence[float], accuracy: Sequence[Sequence[float]]) -> float:
    """The rate with the highest mean validation accuracy (a tie, to within one validation
    example in 10^6, goes to the smaller rate)."""
    means = [float(np.mean(a)) for a in accuracy]
    best = max(means)
    return min(lr for lr, m in zip(lrs, means, strict=True) if m >= best - 1e-6)


def first_steps(data: DigitsData, norm: str, lr: float, seeds: Sequence[int], *,
                steps: int) -> dict[str, np.ndarray]:
    """Loss and gradient norm of the first ``steps`` SGD steps, shape ``(seeds, steps)``.

    A run that diverges before ``steps`` is padded with ``inf``.
    """
    epochs = max(1, -(-steps * 64 // data.x_train.shape[0]))
    losses = np.full((len(seeds), steps), np.inf)
    norms = np.full((len(seeds), steps), np.inf)
    for i, s in enumerate(seeds):
        r = train_sgd(make_net(norm, seed=s), data, lr=lr, epochs=epochs, seed=s)
        n = min(steps, r.losses.size)
        losses[i, :n], norms[i, :n] = r.losses[:n], r.grad_norms[:n]
    return {"loss": losses, "grad_norm": norms}


def init_sweep(data: DigitsData, scales: Sequence[float], seeds: Sequence[int],
               lrs: dict[str, float], *, epochs: int = EPOCHS,
               arms: Sequence[tuple[str, str, bool]] = INIT_ARMS) -> dict[str, dict[str, list]]:
    """``{arm: {"accuracy": [[...per seed] per scale], "diverged": [...]}}``.

    ``lrs`` maps a norm (``"bn"``, ``"none"``) to the rate its runs use.
    """
    out = {}
    for name, norm, scale_last in arms:
        acc, div = [], []
        for a in scales:
            runs = [train_sgd(make_net(norm, seed=s, init_scale=a, scale_last=scale_last),
                              data, lr=lrs[norm], epochs=epochs, seed=s) for s in seeds]
            acc.append([r.accuracy for r in runs])
            div.append([r.diverged for r in runs])
        out[name] = {"accuracy": acc, "diverged": div}
    return out


def load_sweeps(path: str | Path = SWEEP_FILE) -> dict[str, Any]:
    """The stored sweeps (see :func:`main`)."""
    with open(path) as f:
        return json.load(f)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the learning-rate and initialization sweeps on the validation split and store them."""
    import argparse

    from ..training import _load_average

    parser = argparse.ArgumentParser(prog="python -m bncourse.why.rates",
                                     description=main.__doc__)
    parser.add_argument("path", nargs="?", default=str(SWEEP_FILE),
                        help="where to write the JSON (default: book/data/why_sweeps.json)")
    args = parser.parse_args(argv)
    load_before = _load_average()
    start = time.perf_counter()
    val = split_validation(load_digits_data())
    norms = ("bn", "noisy", "none")
    lr = lr_sweep(val, norms, LR_GRID, SEEDS)
    chosen = {n: chosen_rate(LR_GRID, lr[n]["accuracy"]) for n in norms}
    largest = {n: largest_trained_rate(LR_GRID, lr[n]["accuracy"], lr[n]["diverged"])
               for n in norms}
    init = init_sweep(val, INIT_SCALES, SEEDS, chosen)
    seconds = time.perf_counter() - start
    runs = len(norms) * len(LR_GRID) * len(SEEDS) + len(INIT_ARMS) * len(INIT_SCALES) * len(SEEDS)
    record = {
        "lrs": list(LR_GRID), "init_scales": list(INIT_SCALES), "seeds": list(SEEDS),
        "epochs": EPOCHS, "batch_size": 64, "validation_fraction": 0.2, "split_seed": 0,
        "trains_accuracy": TRAINS_ACCURACY,
        "lr_sweep": lr, "chosen": chosen, "largest_trained": largest, "init_sweep": init,
        "provenance": provenance(
            "python -m bncourse.why.rates",
            f"{runs} training runs of {EPOCHS} epochs, one thread each", seconds, load_before),
    }
    write_json(args.path, record)
    for n in norms:
        means = np.round(100 * np.mean(lr[n]["accuracy"], axis=1), 1).tolist()
        print(f"{n:<6} chosen lr {chosen[n]:g}, largest that trains {largest[n]}; "
              f"validation accuracy (%) by lr: {means}")


if __name__ == "__main__":
    main()
