"""Small networks and measurements for the chapter on the transform.

* :func:`make_mlp`: a seeded multilayer perceptron, with BN before or after each nonlinearity
  or without BN.
* :func:`bn_activations`: what every BN layer of a network receives and returns on a batch.
* :func:`batch_dependence`: the training-mode output of one fixed example in many batches.
* :func:`output_std`: how eps shrinks the output of a low-variance channel.
* :func:`compare_with_torch`: ``bncourse`` against ``torch.nn.BatchNorm1d/2d`` in float64.
* :func:`placement_experiment`: BN before or after the ReLU (or none), trained on the digits
  over a few seeds, with means, standard errors and the paired difference
  (:func:`bncourse.claims.paired_difference`).
* :func:`unit_input_over_training`: percentiles of one unit's pre-activation on a fixed batch
  over the training steps, with or without BN: internal covariate shift, measured; and
  :func:`layer_drift`, how far a whole layer's medians moved, on three scales.

Everything is seeded, so the same call gives the same numbers on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .claims import Estimate, paired_difference
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
    "PlacementResult",
    "placement_experiment",
    "LayerDrift",
    "layer_drift",
    "UnitTrace",
    "unit_input_over_training",
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


# --------------------------------------------------------------------------------------
# Measured runs on the digits: where BN goes, and one unit's input over training
# --------------------------------------------------------------------------------------


def _digits(data: Any) -> Any:
    from .training import load_digits_data

    return load_digits_data() if data is None else data


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean, with the unbiased variance of the values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise ValueError("a standard error needs at least two values")
    return float(values.std(ddof=1) / np.sqrt(values.size))


@dataclass(frozen=True)
class PlacementResult:
    """Test accuracies (in %) per placement, one per seed, the seeds paired by index."""

    seeds: tuple[int, ...]
    accuracy: dict[str, np.ndarray]

    def mean(self, placement: str) -> float:
        """Mean test accuracy of ``placement`` over the seeds, in %."""
        return float(np.mean(self.accuracy[placement]))

    def stderr(self, placement: str) -> float:
        """Standard error of that mean, in percentage points."""
        return _standard_error(self.accuracy[placement])

    def difference(self, first: str = "before", second: str = "after") -> Estimate:
        """The paired difference ``first - second`` over the seeds, in percentage points.

        Mean, standard error, count and 95% interval
        (:func:`bncourse.claims.paired_difference`): the seeds pair the runs, since both
        placements of one seed start from the same linear weights and see the same batches.
        """
        return paired_difference(self.accuracy[first], self.accuracy[second],
                                 what=f"test accuracy, {first} minus {second}")


def placement_experiment(
    data: Any = None,
    *,
    placements: tuple[str, ...] = ("before", "after", "none"),
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    width: int = 64,
    depth: int = 2,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-2,
    threads: int | None = 1,
) -> PlacementResult:
    """Train the same MLP with BN before the ReLU, after it, or without BN, on the digits.

    For each seed every placement starts from the same linear weights (:func:`make_mlp` draws
    only the linear layers) and sees the same mini-batches (``training.train`` with that
    seed), so the seeds pair the runs. Adam with learning rate ``lr`` on the cross-entropy
    (:func:`bncourse.training.train`); test accuracy in eval mode, in %. ``data`` defaults
    to :func:`bncourse.training.load_digits_data`.
    """
    from .training import accuracy, torch_threads, train

    if len(seeds) < 2:
        raise ValueError("give at least two seeds, so that a standard error exists")
    for placement in placements:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    data = _digits(data)
    in_features = data.x_train.shape[1]
    classes = int(data.y_train.max()) + 1
    results: dict[str, list[float]] = {p: [] for p in placements}
    with torch_threads(threads):
        for seed in seeds:
            for placement in placements:
                model = make_mlp(in_features, width, depth, classes, placement=placement,
                                 seed=seed, dtype=data.x_train.dtype)
                train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      progress=False, threads=None)
                results[placement].append(100.0 * accuracy(model, data.x_test, data.y_test))
    return PlacementResult(tuple(seeds), {p: np.array(a) for p, a in results.items()})


@dataclass(frozen=True)
class LayerDrift:
    r"""How far the medians of a layer's units moved between two records, on three scales.

    Each field is a mean over the units of the layer. ``median_shift`` is
    $|\mathrm{median}_{\text{last}} - \mathrm{median}_{\text{first}}|$ in the units of the
    values; ``initial_range`` and ``final_range`` are the distances between the 15th and
    85th percentiles in the first and the last record; ``shift_in_initial_ranges`` and
    ``shift_in_final_ranges`` are each unit's shift divided by its own range, then averaged.
    Which scale is fair matters: a layer that starts with an almost collapsed signal has a
    tiny initial range, and a shift measured in it looks large.
    """

    median_shift: float
    initial_range: float
    final_range: float
    shift_in_initial_ranges: float
    shift_in_final_ranges: float


def layer_drift(first: np.ndarray, last: np.ndarray) -> LayerDrift:
    """:class:`LayerDrift` between two records of shape ``(examples, units)``."""
    first, last = np.asarray(first, dtype=np.float64), np.asarray(last, dtype=np.float64)
    if first.ndim != 2 or first.shape[1:] != last.shape[1:]:
        raise ValueError(f"give two records of shape (examples, units) with the same units; "
                         f"got {first.shape} and {last.shape}")
    q_first = np.percentile(first, [15.0, 50.0, 85.0], axis=0)
    q_last = np.percentile(last, [15.0, 50.0, 85.0], axis=0)
    shift = np.abs(q_last[1] - q_first[1])
    range_first, range_last = q_first[2] - q_first[0], q_last[2] - q_last[0]
    return LayerDrift(
        median_shift=float(shift.mean()),
        initial_range=float(range_first.mean()),
        final_range=float(range_last.mean()),
        shift_in_initial_ranges=float(np.mean(shift / range_first)),
        shift_in_final_ranges=float(np.mean(shift / range_last)),
    )


@dataclass(frozen=True)
class UnitTrace:
    """``percentiles[k]`` of one unit's pre-activation on a fixed batch after ``steps[k]``
    optimizer steps; ``levels`` are the percentile levels (columns); ``drift`` is the
    :class:`LayerDrift` of the whole layer from the first record to the last."""

    placement: str
    unit: int
    levels: tuple[float, ...]
    steps: np.ndarray
    percentiles: np.ndarray
    drift: LayerDrift


def unit_input_over_training(
    data: Any = None,
    *,
    placement: str = "before",
    width: int = 64,
    depth: int = 3,
    unit: int = 0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-2,
    every: int = 5,
    probe_size: int = 500,
    levels: tuple[float, ...] = (15.0, 50.0, 85.0),
    seed: int = 0,
    threads: int | None = 1,
) -> UnitTrace:
    r"""Percentiles of the input of the last hidden ReLU, one unit, over training on the digits.

    This is what the next nonlinearity receives: $z = Wh + b$ without BN, $\mathrm{BN}(z)$
    with BN before the ReLU (``placement="before"``). It is measured every ``every`` steps
    on a fixed probe batch (the first ``probe_size`` test images, never trained on), in
    training mode on a copy of the network, so the measurement leaves the running
    statistics alone. With BN this means that on the probe batch each unit has mean $\beta$
    and standard deviation $|\gamma|\,\sigma_B/\sqrt{\sigma_B^2+\epsilon}$ by construction,
    whatever the layers before do: only $\gamma$, $\beta$ and the shape of the distribution
    can move. ``drift`` is :func:`layer_drift` of every unit of that layer between the first
    record and the last.
    """
    import copy

    from .training import minibatches, torch_threads

    if placement not in ("before", "none"):
        raise ValueError(f"placement must be 'before' or 'none'; got {placement!r}")
    if not 0 <= unit < width:
        raise ValueError(f"unit must be in [0, {width}); got {unit}")
    if every < 1 or epochs < 1:
        raise ValueError("every and epochs must be positive")
    data = _digits(data)
    model = make_mlp(data.x_train.shape[1], width, depth, int(data.y_train.max()) + 1,
                     placement=placement, seed=seed, dtype=data.x_train.dtype)
    probe = data.x_test[:probe_size]

    def measure() -> np.ndarray:
        snapshot = copy.deepcopy(model)
        snapshot.train()
        last = [m for m in snapshot if isinstance(m, nn.ReLU)][-1]
        return _record(snapshot, probe, [last], lambda inputs, _out: _array(inputs[0]))[0]

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    step = 0
    with torch_threads(threads):
        steps, records = [0], [measure()]
        first = records[0]
        model.train()
        for _ in range(epochs):
            for xb, yb in minibatches(data.x_train, data.y_train, batch_size, generator):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb).backward()
                optimizer.step()
                step += 1
                if step % every == 0:
                    steps.append(step)
                    records.append(measure())
    pct = np.array([np.percentile(r[:, unit], levels) for r in records])
    return UnitTrace(placement, unit, tuple(float(v) for v in levels), np.array(steps), pct,
                     layer_drift(first, records[-1]))
