"""Claim 6, "BN acts as a regularizer": the noise of batch statistics separated from the rest.

On a training set small enough to overfit, the same MLP is trained with the same batches
(size :data:`BATCH`) and the same optimizer in several variants (:data:`VARIANTS`): BN whose
statistics come from ghost batches of 4, 16 or the whole batch; full-set BN, whose statistics
are those of all the training examples, recomputed at every step with the gradient flowing
through them while the loss is taken on the mini-batch (BN's normalization without batch
noise); BN whose statistics are frozen at their population values after a warm-up (after which
the layer no longer normalizes: its input drifts away from the frozen moments); no BN; and no
BN with dropout. The train-test gap and the test accuracy are compared, paired by seed. Each
variant's learning rate is chosen on a validation split of the small training set
(:func:`select_rates`, stored by ``python -m bncourse.why.regularizer``). Every variant
trains on the same small training set and is tested on the same test set: the uncertainties
are over seeds only (initialization and batch order), not over the choice of examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..freezing import batch_norm_layers, reestimate_running_stats
from ..training import DTYPE, DigitsData, accuracy, minibatches, torch_threads

__all__ = [
    "GhostBatchNorm1d",
    "VARIANTS",
    "BATCH",
    "LR_GRID",
    "small_training_set",
    "make_model",
    "train_variant",
    "RegularizerResult",
    "run",
    "select_rates",
    "DATA_FILE",
]

#: Every variant uses this batch size; only the statistics BN sees change.
BATCH = 64

#: ``bn_ghost4``/``bn_ghost16``: statistics of ghost batches of 4 / 16 examples;
#: ``bn``: of the whole batch of 64; ``bn_frozen``: population statistics, frozen after the
#: warm-up (a fixed affine map from then on, which stops normalizing as the weights move);
#: ``bn_full``: statistics of the whole training set at every step, gradients flowing through
#: them, loss on the mini-batch; ``none``: no BN; ``dropout``: no BN, dropout 0.3 after each
#: hidden ReLU.
VARIANTS = ("bn_ghost4", "bn_ghost16", "bn", "bn_full", "bn_frozen", "none", "dropout")

LR_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03)

#: Epochs of training; BN's statistics are frozen after :data:`WARMUP` of them.
EPOCHS = 60
WARMUP = 5
DROPOUT = 0.3


class GhostBatchNorm1d(nn.BatchNorm1d):
    """BN whose training-mode statistics come from consecutive ghost batches of ``ghost`` rows.

    Each ghost batch is normalized with its own mean and biased variance (a batch whose size
    is not a multiple of ``ghost`` leaves a last, smaller ghost batch). The running
    statistics are updated as torch's layer does, from the whole batch; in eval mode the
    layer is torch's.
    """

    def __init__(self, num_features: int, ghost: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if ghost < 2:
            raise ValueError(f"a ghost batch needs at least 2 rows; got ghost={ghost}")
        self.ghost = ghost

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        with torch.no_grad():
            super().forward(x)          # updates the running statistics only
        parts = []
        for chunk in torch.split(x, self.ghost):
            if chunk.shape[0] < 2:
                raise ValueError("a ghost batch of one row cannot be normalized")
            mean = chunk.mean(dim=0, keepdim=True)
            var = chunk.var(dim=0, unbiased=False, keepdim=True)
            parts.append((chunk - mean) / torch.sqrt(var + self.eps))
        return torch.cat(parts) * self.weight + self.bias


def small_training_set(data: DigitsData, n: int = 300, seed: int = 0) -> DigitsData:
    """``n`` training examples drawn stratified from ``data``'s training set; test set kept."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(data.x_train.shape[0])
    keep, _ = train_test_split(idx, train_size=n, random_state=seed,
                               stratify=data.y_train.numpy())
    keep = torch.from_numpy(np.sort(keep))
    return DigitsData(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test,
                      data.pixel_mean, data.pixel_std)


def make_model(variant: str, widths: Sequence[int] = (128, 128), seed: int = 0) -> nn.Sequential:
    """The MLP of ``variant``: ``Linear -> [norm] -> ReLU [-> Dropout]`` per width, then
    ``Linear``; the same weights for every variant under the same seed."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = 64
    for width in widths:
        layers.append(nn.Linear(previous, width, dtype=DTYPE))
        if variant.startswith("bn_ghost"):
            layers.append(GhostBatchNorm1d(width, int(variant[len("bn_ghost"):]), dtype=DTYPE))
        elif variant.startswith("bn"):
            layers.append(nn.BatchNorm1d(width, dtype=DTYPE))
        layers.append(nn.ReLU())
        if variant == "dropout":
            layers.append(nn.Dropout(DROPOUT))
        previous = width
    layers.append(nn.Linear(previous, 10, dtype=DTYPE))
    return nn.Sequential(*layers)


def _freeze_statistics(model: nn.Module, data: DigitsData) -> None:
    """Population statistics of the whole training set; BN layers then stay in eval mode
    (their gamma and beta keep training)."""
    reestimate_running_stats(model, [data.x_train])
    for layer in batch_norm_layers(model):
        layer.eval()
        layer.train = lambda mode=True, layer=layer: layer   # stays in eval mode


def train_variant(variant: str, data: DigitsData, *, lr: float, seed: int,
                  epochs: int = EPOCHS, batch: int = BATCH) -> nn.Sequential:
    """Adam with batches of ``batch`` (the order seeded by ``seed``); returns the model.

    For ``bn_full`` each step runs the whole training set through the network in training
    mode (so BN normalizes with the statistics of all the examples, and the gradient flows
    through them) and takes the loss on the mini-batch's rows only; the batches are the same
    as the other variants'.
    """
    if batch < 2:
        raise ValueError(f"batch must be at least 2; got {batch}")
    model = make_model(variant, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(5000 + seed)
    rows = torch.arange(data.x_train.shape[0])
    model.train()
    with torch_threads(1):
        for epoch in range(epochs):
            if variant == "bn_frozen" and epoch == WARMUP:
                _freeze_statistics(model, data)
            for xb, idx in minibatches(data.x_train, rows, batch, gen):
                optimizer.zero_grad(set_to_none=True)
                if variant == "bn_full":
                    out = model(data.x_train)[idx]
                else:
                    out = model(xb)
                loss_fn(out, data.y_train[idx]).backward()
                optimizer.step()
    return model


@dataclass(frozen=True)
class RegularizerResult:
    """Train and test accuracy per variant, one value per seed (in the order of ``seeds``)."""

    seeds: tuple[int, ...]
    lr: dict[str, float]
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    def gap(self, variant: str) -> np.ndarray:
        """Training accuracy minus test accuracy, per seed."""
        return self.train[variant] - self.test[variant]


def run(data: DigitsData, lr: dict[str, float], seeds: Sequence[int],
        variants: Sequence[str] = VARIANTS, epochs: int = EPOCHS) -> RegularizerResult:
    """Train each variant at its rate for each seed; accuracies in eval mode."""
    train, test = {}, {}
    for variant in variants:
        tr, te = [], []
        for seed in seeds:
            model = train_variant(variant, data, lr=lr[variant], seed=seed, epochs=epochs)
            tr.append(accuracy(model, data.x_train, data.y_train))
            te.append(accuracy(model, data.x_test, data.y_test))
        train[variant], test[variant] = np.array(tr), np.array(te)
    return RegularizerResult(tuple(seeds), {v: lr[v] for v in variants}, train, test)


#: Where ``python -m bncourse.why.regularizer`` stores the learning-rate selection.
DATA_FILE = (Path(__file__).resolve().parent.parent.parent / "book" / "data"
             / "why_mechanisms_regularizer.json")


#: The seeds of the stored final runs (test accuracy at the chosen rates).
FINAL_SEEDS = tuple(range(10))


def select_rates(small: DigitsData, seeds: Sequence[int] = range(3),
                 lrs: Sequence[float] = LR_GRID) -> dict:
    """Validation accuracy (a fifth of the small training set held out) per variant and rate;
    the chosen rate is the one with the best mean over ``seeds``."""
    from ..training import split_validation

    val = split_validation(small, fraction=0.2, seed=0)
    out: dict = {"lrs": list(lrs), "seeds": list(seeds), "validation": {}, "chosen": {}}
    for variant in VARIANTS:
        means = []
        for lr in lrs:
            accs = [accuracy(m, val.x_test, val.y_test) for m in
                    (train_variant(variant, val, lr=lr, seed=s) for s in seeds)]
            means.append(float(np.mean(accs)))
        out["validation"][variant] = means
        out["chosen"][variant] = float(lrs[int(np.argmax(means))])
    return out


def main() -> None:
    """Choose each variant's learning rate on the validation split and store it."""
    import platform
    import time

    from ..training import load_digits_data

    start = time.perf_counter()
    small = small_training_set(load_digits_data())
    out = select_rates(small)
    result = run(small, out["chosen"], seeds=FINAL_SEEDS)
    out["final_seeds"] = list(FINAL_SEEDS)
    out["train"] = {v: a.tolist() for v, a in result.train.items()}
    out["test"] = {v: a.tolist() for v, a in result.test.items()}
    out["provenance"] = {
        "command": "python -m bncourse.why.regularizer",
        "runs": (f"{len(VARIANTS)} variants x {len(LR_GRID)} learning rates x 3 seeds "
                 f"(selection), then {len(VARIANTS)} variants x {len(FINAL_SEEDS)} seeds"),
        "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "threads_per_run": 1,
        "seconds": round(time.perf_counter() - start),
    }
    DATA_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["chosen"]))


if __name__ == "__main__":
    main()
