"""BN in the wild: what the batch leaks, test-time shift, batches of one.

In training mode an example's output depends on the rest of its batch; at test time the
statistics come from data that may no longer look like the test data. The measurements:

* :func:`batch_stats_forward`: a network of ``Linear``/BN/``ReLU`` run with every BN layer
  normalizing by the batch's own statistics (training mode's output) without touching the
  running statistics; it also runs a batch of one, where $\\hat x = 0$.
* :func:`batch_leak`: how much one example's training-mode output and prediction change
  when its batch-mates change, against the batch size and how alike the batch is.
* :func:`step_batches`, :func:`train_sub_batches`, :func:`sorted_batches_experiment`:
  training on class-sorted sub-batches (one class per sub-batch) and its fixes (shuffling,
  shuffled BN across the sub-batches, GroupNorm).
* :func:`shift_images`, :func:`shifted_accuracy`: the digits under contrast, inversion,
  noise and blur, scored with the training statistics, AdaBN, the test batch's statistics
  and TENT.

Everything is seeded and in float64 (:data:`bncourse.training.DTYPE`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .training import DTYPE, DigitsData, torch_threads

__all__ = [
    "NORMS",
    "REGIMES",
    "SHIFTS",
    "SEVERITIES",
    "METHODS",
    "make_net",
    "batch_stats_forward",
    "LeakResult",
    "batch_leak",
    "step_batches",
    "train_sub_batches",
    "sorted_batch_accuracy",
    "SortedResult",
    "sorted_batches_experiment",
    "shift_images",
    "shifted_inputs",
    "entropy",
    "shifted_accuracy",
    "passes_per_example",
    "last_batch_size",
    "raw_pixels",
]

#: The normalization of :func:`make_net`'s hidden layers.
NORMS = ("bn", "gn")

#: How :func:`step_batches` makes a training step's sub-batches.
REGIMES = ("sorted", "shuffled", "shuffle_bn")

#: The synthetic shifts of :func:`shift_images`, and their settings at severities 1, 2, 3.
SHIFTS = ("contrast", "inversion", "noise", "blur")
SEVERITIES = {
    "contrast": (0.5, 0.3, 0.15),   # each image's deviation from its own mean pixel, kept
    "inversion": (0.25, 0.4, 1.0),  # weight of the inverted image 16 - x in a blend
    "noise": (1.0, 2.0, 3.0),       # standard deviation of added noise, in pixel units (0..16)
    "blur": (0.5, 0.8, 1.2),        # standard deviation of a Gaussian blur, in pixels
}

#: How :func:`shifted_accuracy` normalizes at test time.
METHODS = ("running", "adabn", "batch", "tent")


def make_net(norm: str = "bn", *, width: int = 128, groups: int = 16, seed: int = 0,
             dtype: torch.dtype = DTYPE) -> nn.Sequential:
    """``Linear (no bias) -> norm -> ReLU`` twice, then ``Linear`` to the ten class scores.

    ``norm`` is ``"bn"`` (``nn.BatchNorm1d``) or ``"gn"`` (``nn.GroupNorm`` with ``groups``
    groups: each example normalized over its own channels, no batch in it). Seeded.
    """
    if norm not in NORMS:
        raise ValueError(f"make_net: norm must be one of {NORMS}, got {norm!r}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = 64
    for _ in range(2):
        layers.append(nn.Linear(previous, width, bias=False, dtype=dtype))
        layers.append(nn.BatchNorm1d(width, dtype=dtype) if norm == "bn"
                      else nn.GroupNorm(groups, width, dtype=dtype))
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, 10, dtype=dtype))
    return nn.Sequential(*layers)


def batch_stats_forward(model: nn.Sequential, x: Tensor) -> Tensor:
    """``model``'s output with every BN layer normalizing by the batch's own statistics.

    The batch is the second-to-last axis of ``x`` (``(B, features)``, or ``(draws, B,
    features)`` for many batches at once). Each BN layer computes
    $\\gamma (x - \\mu_B)/\\sqrt{\\sigma_B^2 + \\epsilon} + \\beta$ with the biased batch
    variance, as torch's training mode does, but the running statistics are neither used nor
    updated. With ``B = 1`` the batch variance is 0 and $\\hat x = 0$: the layer outputs
    $\\beta$ (torch's training mode refuses such a batch). Other layers run as they are.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"batch_stats_forward: model must be an nn.Sequential, "
                        f"got {type(model).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"batch_stats_forward: x must be (B, features) or (draws, B, "
                         f"features), got shape {tuple(x.shape)}")
    h = x
    for layer in model:
        if isinstance(layer, _BatchNorm):
            mean = h.mean(dim=-2, keepdim=True)
            var = ((h - mean) ** 2).mean(dim=-2, keepdim=True)
            h = (h - mean) / torch.sqrt(var + layer.eps)
            if layer.affine:
                h = h * layer.weight + layer.bias
        elif isinstance(layer, nn.GroupNorm) and h.ndim == 3:
            d, b, c = h.shape
            h = layer(h.reshape(d * b, c)).reshape(d, b, c)
        else:
            h = layer(h)
    return h


# --------------------------------------------------------------------------------------
# What the batch leaks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakResult:
    """One example's output across ``draws`` batches of ``batch_size``, over ``examples``.

    ``logit_spread``: the standard deviation of a class score across the draws, averaged
    over classes and examples; ``flip_rate``: the fraction of (example, draw) pairs whose
    prediction differs from that example's most frequent prediction.
    """

    batch_size: int
    same_class: bool
    logit_spread: float
    flip_rate: float


@torch.no_grad()
def batch_leak(model: nn.Sequential, x: Tensor, y: Tensor, batch_size: int, *,
               same_class: bool = False, examples: int = 100, draws: int = 50,
               mode: str = "train", seed: int = 0) -> LeakResult:
    """How one example's output depends on its ``batch_size - 1`` batch-mates.

    For each of ``examples`` examples of ``x`` (drawn with ``seed``), ``draws`` batches are
    made of the example and batch-mates drawn at random from the others (from the others of
    its own class when ``same_class``). ``mode="train"`` normalizes with each batch's
    statistics (:func:`batch_stats_forward`), ``mode="eval"`` with the running statistics:
    there the measure is exactly 0.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"batch_leak: mode must be 'train' or 'eval', got {mode!r}")
    if batch_size < 2:
        raise ValueError(f"batch_leak: batch_size must be at least 2, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    chosen = torch.randperm(n, generator=gen)[:examples]
    spreads, flips = [], []
    was_training = model.training
    model.eval()
    try:
        for i in chosen.tolist():
            pool = torch.arange(n)
            pool = pool[(pool != i) & ((y == y[i]) if same_class else True)]
            if pool.numel() < batch_size - 1:
                raise ValueError(f"batch_leak: only {pool.numel()} possible batch-mates for a "
                                 f"batch of {batch_size}")
            mates = torch.stack([pool[torch.randperm(pool.numel(), generator=gen)
                                      [:batch_size - 1]] for _ in range(draws)])
            idx = torch.cat([torch.full((draws, 1), i), mates], dim=1)
            xb = x[idx]
            if mode == "train":
                out = batch_stats_forward(model, xb)[:, 0]
            else:
                out = model(xb.reshape(-1, xb.shape[-1])).reshape(draws, batch_size, -1)[:, 0]
            spreads.append(float(out.std(dim=0).mean()))
            pred = out.argmax(dim=1)
            flips.append(float((pred != pred.mode().values).double().mean()))
    finally:
        model.train(was_training)
    return LeakResult(batch_size, same_class, float(np.mean(spreads)), float(np.mean(flips)))


# --------------------------------------------------------------------------------------
# Class-sorted batches
# --------------------------------------------------------------------------------------


def step_batches(y: Tensor, regime: str, *, sub_batch: int = 16, groups: int = 8,
                 generator: torch.Generator) -> list[list[Tensor]]:
    """One epoch of training steps, each a list of ``groups`` index tensors of ``sub_batch``.

    ``"sorted"``: each sub-batch holds one class (``groups`` distinct classes per step), as a
    per-class loader or a sampler over class-sorted data gives, and as each process of a
    data-parallel run sees when every process loads one class. ``"shuffled"``: the examples
    in random order, so every sub-batch is a random sample. ``"shuffle_bn"``: the sorted
    steps' examples, shuffled across the step's sub-batches before normalization (the
    "shuffling BN" of MoCo, which permutes a batch across GPUs): the same examples per step
    as ``"sorted"``, mixed classes in each sub-batch.
    """
    if regime not in REGIMES:
        raise ValueError(f"step_batches: regime must be one of {REGIMES}, got {regime!r}")
    per_step = sub_batch * groups
    steps = y.numel() // per_step
    if regime == "shuffled":
        order = torch.randperm(y.numel(), generator=generator)
        return [list(order[s * per_step:(s + 1) * per_step].split(sub_batch))
                for s in range(steps)]
    classes = int(y.max()) + 1
    if groups > classes:
        raise ValueError(f"step_batches: {groups} sub-batches of distinct classes need at "
                         f"least {groups} classes, got {classes}")
    by_class = [torch.nonzero(y == c).flatten() for c in range(classes)]
    result = []
    for _ in range(steps):
        picked = torch.randperm(classes, generator=generator)[:groups].tolist()
        subs = [by_class[c][torch.randperm(by_class[c].numel(), generator=generator)
                            [:sub_batch]] for c in picked]
        if regime == "shuffle_bn":
            flat = torch.cat(subs)
            subs = list(flat[torch.randperm(flat.numel(), generator=generator)]
                        .split(sub_batch))
        result.append(subs)
    return result


def train_sub_batches(model: nn.Module, data: DigitsData, regime: str, *, epochs: int = 20,
                      lr: float = 1e-2, sub_batch: int = 16, groups: int = 8,
                      seed: int = 0) -> nn.Module:
    """Adam on the cross-entropy; each step's sub-batches run through ``model`` separately.

    Every sub-batch is normalized by its own statistics (as each process of a data-parallel
    run without SyncBN normalizes its own share); the loss is the mean over the whole step.
    Changes ``model`` in place and returns it.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with torch_threads(1):
        for _ in range(epochs):
            for subs in step_batches(data.y_train, regime, sub_batch=sub_batch, groups=groups,
                                     generator=gen):
                logits = torch.cat([model(data.x_train[i]) for i in subs])
                loss = loss_fn(logits, data.y_train[torch.cat(subs)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model


@torch.no_grad()
def sorted_batch_accuracy(model: nn.Sequential, x: Tensor, y: Tensor, *,
                          sub_batch: int = 16) -> float:
    """Accuracy in training mode on class-sorted batches: each batch of ``sub_batch`` holds
    one class (what a training loop over sorted data reports); running statistics untouched."""
    correct = 0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        for chunk in idx.split(sub_batch):
            if chunk.numel() < 2:
                raise ValueError("sorted_batch_accuracy: a class left a batch of one; "
                                 "choose another sub_batch")
            correct += int((batch_stats_forward(model, x[chunk]).argmax(1) == y[chunk]).sum())
    return correct / y.numel()


@dataclass(frozen=True)
class SortedResult:
    """Per seed: test accuracy in eval mode, and training-mode accuracy on class-sorted
    batches of the training set (what a training loop over sorted data reports) and of the
    test set."""

    variant: str
    eval_acc: np.ndarray
    train_loop_acc: np.ndarray
    train_mode_sorted_acc: np.ndarray


#: The variants of :func:`sorted_batches_experiment`: (regime, normalization).
SORTED_VARIANTS = {
    "sorted": ("sorted", "bn"),
    "shuffled": ("shuffled", "bn"),
    "shuffle_bn": ("shuffle_bn", "bn"),
    "groupnorm": ("sorted", "gn"),
}


def sorted_batches_experiment(data: DigitsData, seeds: Sequence[int], *, epochs: int = 20,
                              lr: float = 1e-2) -> dict[str, SortedResult]:
    """Train each variant of :data:`SORTED_VARIANTS` on every seed; score it two ways."""
    results = {}
    for name, (regime, norm) in SORTED_VARIANTS.items():
        ev, loop, tr = [], [], []
        for seed in seeds:
            model = train_sub_batches(make_net(norm, seed=seed), data, regime, epochs=epochs,
                                      lr=lr, seed=seed)
            model.eval()
            with torch.no_grad():
                ev.append(float((model(data.x_test).argmax(1) == data.y_test).double().mean()))
            loop.append(sorted_batch_accuracy(model, data.x_train, data.y_train))
            tr.append(sorted_batch_accuracy(model, data.x_test, data.y_test))
        results[name] = SortedResult(name, np.array(ev), np.array(loop), np.array(tr))
    return results


# --------------------------------------------------------------------------------------
# Test-time shift
# --------------------------------------------------------------------------------------


def shift_images(raw: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """Digits' raw pixels (``(n, 64)``, 0..16) under ``kind`` at ``severity`` 0 (none) to 3.

    Contrast keeps a fraction of each image's deviation from its own mean pixel; inversion
    blends the image with its negative ``16 - x``; noise adds Gaussian noise (seeded) and
    clips to 0..16; blur applies a Gaussian blur to each 8x8 image. Settings:
    :data:`SEVERITIES`.
    """
    if kind not in SHIFTS:
        raise ValueError(f"shift_images: kind must be one of {SHIFTS}, got {kind!r}")
    if severity not in (0, 1, 2, 3):
        raise ValueError(f"shift_images: severity must be 0, 1, 2 or 3, got {severity}")
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 64:
        raise ValueError(f"shift_images: raw must be (n, 64) pixels, got {raw.shape}")
    if severity == 0:
        return raw.copy()
    s = SEVERITIES[kind][severity - 1]
    if kind == "contrast":
        mean = raw.mean(axis=1, keepdims=True)
        return mean + s * (raw - mean)
    if kind == "inversion":
        return (1 - s) * raw + s * (16.0 - raw)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(raw + rng.normal(0.0, s, raw.shape), 0.0, 16.0)
    from scipy.ndimage import gaussian_filter

    images = raw.reshape(-1, 8, 8)
    return np.stack([gaussian_filter(im, s, mode="constant") for im in images]).reshape(-1, 64)


def shifted_inputs(data: DigitsData, raw: np.ndarray, kind: str, severity: int,
                   seed: int = 0) -> Tensor:
    """:func:`shift_images` of ``raw``, standardized with the training set's pixel statistics."""
    return data.standardize(shift_images(raw, kind, severity, seed))


def entropy(logits: Tensor) -> Tensor:
    """The mean over the batch of the prediction's entropy, $-\\sum_k p_k \\log p_k$."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def _batches(n: int, batch_size: int, seed: int) -> list[Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(order.split(batch_size))


def shifted_accuracy(model: nn.Sequential, x: Tensor, y: Tensor, method: str, *,
                     batch_size: int = 64, tent_steps: int = 1, tent_lr: float = 1e-3,
                     seed: int = 0) -> float:
    """Accuracy of a trained ``model`` on test inputs ``x``, normalized by ``method``.

    The test set arrives in random order (``seed``) in batches of ``batch_size`` (the last one
    may be smaller). ``"running"``: eval mode, the training set's running statistics.
    ``"adabn"``: the running statistics replaced by those of all the unlabelled test inputs
    (one pass in training mode with ``momentum=None``; Li et al. 2017), then eval mode: the
    batch size does not matter to it. ``"batch"``: each
    test batch normalized by its own statistics. ``"tent"``: online TENT (Wang et al. 2021),
    as their reference implementation runs it: for each batch in turn, ``tent_steps`` Adam
    steps on the BN layers' gamma and beta only, each a forward under the batch's statistics
    and a backward of the batch's mean prediction entropy; the prediction is the output of the
    last of these forwards, computed before the update it leads to (with ``tent_steps=0``, one
    forward, the test batch's statistics). The adapted gamma and beta carry over to the next
    batch. ``model`` is left unchanged.
    """
    if method not in METHODS:
        raise ValueError(f"shifted_accuracy: method must be one of {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError(f"shifted_accuracy: batch_size must be positive, got {batch_size}")
    batches = _batches(x.shape[0], batch_size, seed)
    work = copy.deepcopy(model)
    correct = 0
    with torch_threads(1):
        if method == "running":
            work.eval()
            with torch.no_grad():
                correct = int((work(x).argmax(1) == y).sum())
        elif method == "adabn":
            bns = [m for m in work.modules() if isinstance(m, _BatchNorm)]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            work.train()
            with torch.no_grad():
                work(x)                 # one pass over every test input: its statistics
                work.eval()
                correct = int((work(x).argmax(1) == y).sum())
        elif method == "batch":
            with torch.no_grad():
                for idx in batches:
                    correct += int((batch_stats_forward(work, x[idx]).argmax(1) == y[idx]).sum())
        else:
            for p in work.parameters():
                p.requires_grad_(False)
            params = []
            for m in work.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.requires_grad_(True)
                    m.bias.requires_grad_(True)
                    params += [m.weight, m.bias]
            optimizer = torch.optim.Adam(params, lr=tent_lr) if tent_steps > 0 else None
            for idx in batches:
                if tent_steps == 0:
                    with torch.no_grad():
                        logits = batch_stats_forward(work, x[idx])
                for _ in range(tent_steps):
                    logits = batch_stats_forward(work, x[idx])
                    loss = entropy(logits)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                correct += int((logits.detach().argmax(1) == y[idx]).sum())
    return correct / y.numel()


def passes_per_example(method: str, *, tent_steps: int = 1) -> dict[str, int]:
    """What ``method`` costs per test example: forward and backward passes through the net.

    AdaBN's forward to re-estimate the statistics is done once per test set, before any
    prediction: one more forward pass per example, and the whole test set needed first.
    TENT predicts with the output of its last adaptation forward: ``tent_steps`` forwards and
    backwards (one forward when ``tent_steps`` is 0).
    """
    if method not in METHODS:
        raise ValueError(f"passes_per_example: method must be one of {METHODS}, got {method!r}")
    if method == "tent":
        return {"forward": max(tent_steps, 1), "backward": tent_steps}
    return {"forward": 2 if method == "adabn" else 1, "backward": 0}


# --------------------------------------------------------------------------------------
# Batches of one
# --------------------------------------------------------------------------------------


def last_batch_size(n: int, batch_size: int, drop_last: bool = False) -> int:
    """The size of a data loader's last batch over ``n`` examples (0 when none is left)."""
    if n < 0 or batch_size < 1:
        raise ValueError(f"last_batch_size: need n >= 0 and batch_size >= 1, got {n}, "
                         f"{batch_size}")
    rest = n % batch_size
    if drop_last:
        return batch_size if n >= batch_size else 0
    return rest if rest else (batch_size if n else 0)


def raw_pixels(data: DigitsData, x: Tensor) -> np.ndarray:
    """The raw pixels (0..16, integers) behind standardized inputs ``x`` of ``data``."""
    raw = x.detach().cpu().numpy() * data.pixel_std + data.pixel_mean
    return np.rint(raw)
