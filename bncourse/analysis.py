"""Analysis helpers of the gradients chapter: finite-difference sweeps, a wrong gradient, costs.

* :func:`fd_error_sweep`: the error of central differences as a function of the step ``h``,
  and :func:`float32_rounding_limits`: the float32 spacings behind its round-off branch.
* :func:`constants_gradient`: the input gradient obtained when the batch statistics are
  (wrongly) treated as constants, and :func:`constants_error_vs_batch` and
  :func:`constants_error_vs_amplitude` to measure how wrong.
* :func:`saved_bytes_by_variant`, :func:`traffic_per_element` and :func:`traffic_by_kernel`:
  what each implementation keeps for the backward pass, and how many bytes its kernels read
  and write per element (in-place writes included, views free); :data:`NATIVE_CPU_PASSES`
  and :data:`COMPILED_PASSES`: the passes inside torch's kernels and the compiled form's.
* :func:`load_bench`, :func:`bench_ratio` and :func:`achieved_bandwidth`: the benchmark
  table of ``make bench`` (``python -m bncourse.bench``), the paired ratio of two variants'
  times with its interval, and the bandwidth a byte count implies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .claims import Ratio
from .functional import batch_norm_backward, batch_norm_forward, reduction_axes
from .gradcheck import numerical_gradient, rel_error
from .layer import BatchNorm, BatchNormFunction, staged_batch_norm
from .memory import SavedTensors, saved_tensors

__all__ = [
    "VARIANTS",
    "NATIVE_CPU_PASSES",
    "COMPILED_PASSES",
    "fd_error_sweep",
    "norm_rel_error",
    "constants_gradient",
    "constants_error_vs_batch",
    "constants_error_vs_amplitude",
    "constants_error_slopes",
    "float32_rounding_limits",
    "saved_bytes_by_variant",
    "traffic_per_element",
    "traffic_by_kernel",
    "load_bench",
    "bench_ratio",
    "ratio_over",
    "achieved_bandwidth",
    "gradient_consequences",
    "round_up",
]

#: The four implementations the cost section compares, in the order they are shown.
VARIANTS: tuple[str, ...] = ("torch", "bncourse", "staged", "compiled")

#: Passes over tensors of the input's size (each read or write of one such tensor is a pass)
#: in one training step of torch's native CPU kernels, which :func:`traffic_per_element` sees
#: only from outside, as one read of each argument. The kernels
#: (``aten/src/ATen/native/cpu/batch_norm_kernel.cpp``) take the statistics in two passes: the
#: forward reads x for the mean, again for the centred sum of squares, and again to write y
#: (4); the backward reads dy and x for the sums of dy and dy * (x - mean), then dy and x
#: again to write dx (5). A tensor that stays in cache between two passes costs less.
NATIVE_CPU_PASSES: int = 9

#: The same count for the compiled form (``bncourse.layer.compiled_batch_norm``, torch 2.13 on
#: a CPU). AOTAutograd's partitioner saves x, the mean and 1/sigma, not x_hat, and the
#: backward recomputes x_hat from them; Inductor writes one kernel per direction with the
#: loops of torch's kernels: three over x in the forward (mean, centred sum of squares,
#: output, which writes y only) and, in the backward, one over dy and x for the two sums and
#: one over dy and x that writes dx. ``tests/test_analysis.py`` counts these passes in the
#: generated code.
COMPILED_PASSES: int = 9


# --------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------


def _loss(x: np.ndarray, gamma: np.ndarray, dy: np.ndarray, eps: float, dtype: Any) -> float:
    """$L(x) = \\sum_i dy_i\\, y_i(x)$ in ``dtype``: its gradient is BN's backward of ``dy``."""
    x_d = x.astype(dtype)
    y, _ = batch_norm_forward(x_d, gamma.astype(dtype), np.zeros_like(gamma, dtype=dtype), eps)
    return float(np.sum(dy.astype(dtype) * y, dtype=dtype))


def fd_error_sweep(
    x: np.ndarray,
    gamma: np.ndarray,
    dy: np.ndarray,
    hs: Sequence[float],
    eps: float = 1e-5,
    dtype: Any = np.float64,
) -> np.ndarray:
    """$\\mathrm{rel\\_error}(dx_{\\text{analytic}}, dx_{\\text{central}}(h))$ for every step ``h``.

    The loss is evaluated in ``dtype`` (float64 or float32); the analytic gradient is the
    compact backward in float64. Truncation error grows as $h^2$, round-off as
    $\\varepsilon_{mach}/h$.
    """
    x = np.asarray(x, dtype=np.float64)
    _, cache = batch_norm_forward(x, gamma, np.zeros_like(gamma), eps)
    analytic, _, _ = batch_norm_backward(dy, cache)
    errors = []
    for h in hs:
        numeric = numerical_gradient(lambda z: _loss(z, gamma, dy, eps, dtype), x, h)
        errors.append(rel_error(analytic, numeric))
    return np.array(errors)


def float32_rounding_limits(x: np.ndarray, gamma: np.ndarray, dy: np.ndarray,
                            eps: float = 1e-5) -> dict[str, float]:
    """The float32 scales behind the round-off branch of a central-difference sweep.

    * ``max_abs_x``, ``x_spacing``: the largest $|x_k|$ and the float32 spacing there;
      $x_k \\pm h$ rounds to $x_k$ for $h$ below ``x_spacing / 2``.
    * ``f``, ``f_spacing``: the loss $f(x) = \\sum dy\\,y$ in float32 and its spacing;
      $f(x + h e_k)$ and $f(x - h e_k)$ round to the same number when their true difference
      $2h\\,|dx_k|$ is below about ``f_spacing / 2``.
    * ``min_abs_dx``: the smallest $|dx_k|$ (float64), so that ``f_spacing / (4 min_abs_dx)``
      is the step below which some difference quotient is expected to be exactly zero.
    """
    x = np.asarray(x, dtype=np.float64)
    _, cache = batch_norm_forward(x, gamma, np.zeros_like(gamma), eps)
    dx, _, _ = batch_norm_backward(dy, cache)
    f32 = np.float32(_loss(x, gamma, dy, eps, np.float32))
    max_abs_x = float(np.max(np.abs(x)))
    return {
        "max_abs_x": max_abs_x,
        "x_spacing": float(np.spacing(np.float32(max_abs_x))),
        "f": float(f32),
        "f_spacing": float(np.spacing(np.abs(f32))),
        "min_abs_dx": float(np.min(np.abs(dx))),
    }


def norm_rel_error(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """$\\lVert a - b\\rVert / \\lVert b\\rVert$: how far ``a`` is from the reference ``b``."""
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------
# The "statistics are constants" mistake
# --------------------------------------------------------------------------------------


def constants_gradient(
    x: torch.Tensor, gamma: torch.Tensor, dy: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """$dx = \\gamma\\, dy / \\sqrt{\\sigma_B^2 + \\epsilon}$: statistics detached.

    The batch statistics are computed from ``x`` but cut off from autograd, as if they were
    constants: the wrong gradient this chapter measures.
    """
    x = x.detach().clone().requires_grad_(True)
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims, keepdim=True).detach()
    var = x.var(dim=dims, correction=0, keepdim=True).detach()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = gamma.view(shape) * (x - mean) / torch.sqrt(var + eps)
    (dx,) = torch.autograd.grad(y, x, dy)
    return dx


def _true_gradient(x: torch.Tensor, gamma: torch.Tensor, dy: torch.Tensor,
                   eps: float = 1e-5) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    y, _, _ = BatchNormFunction.apply(x, gamma, None, eps)
    (dx,) = torch.autograd.grad(y, x, dy)
    return dx


def constants_error_vs_batch(
    sizes: Sequence[int], seed: int = 0, channels: int = 16, shift_noise: float = 0.1
) -> dict[str, np.ndarray]:
    """$\\lVert dx_{\\text{const}} - dx\\rVert / \\lVert dx\\rVert$ per batch size $m$.

    ``"random"``: $dy$ is standard normal noise. ``"shift"``: $dy = 1 + a\\,\\text{noise}$
    with $a$ = ``shift_noise``, a loss that mostly asks every output of a channel to move the
    same way (which the mean subtraction cancels). Inputs are float64, $\\gamma = 1$.
    """
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.ones(channels, dtype=torch.float64)
    out: dict[str, list[float]] = {"random": [], "shift": []}
    for m in sizes:
        x = 3.0 + 2.0 * torch.randn(m, channels, generator=gen, dtype=torch.float64)
        noise = torch.randn(m, channels, generator=gen, dtype=torch.float64)
        for name, dy in (("random", noise), ("shift", 1.0 + shift_noise * noise)):
            wrong = constants_gradient(x, gamma, dy)
            right = _true_gradient(x, gamma, dy)
            out[name].append(norm_rel_error(wrong, right))
    return {k: np.array(v) for k, v in out.items()}


def constants_error_slopes(
    sizes: Sequence[int], seeds: Sequence[int], m_min: int = 16, channels: int = 16
) -> np.ndarray:
    r"""Per seed, the slope of $\log$ error against $\log m$ for random $dy$ ($m \ge$ ``m_min``).

    The error is that of :func:`constants_error_vs_batch`; a slope of $-1/2$ is an error that
    shrinks like $1/\sqrt{m}$. Each seed draws new inputs for every $m$, so the slopes of
    different seeds are independent estimates.
    """
    m = np.asarray(sizes, dtype=float)
    keep = m >= m_min
    if keep.sum() < 2:
        raise ValueError(f"a slope needs at least two sizes >= {m_min}; got {list(sizes)}")
    return np.array([
        np.polyfit(np.log(m[keep]), np.log(
            constants_error_vs_batch(sizes, seed=seed, channels=channels)["random"][keep]), 1)[0]
        for seed in seeds
    ])


def constants_error_vs_amplitude(
    amplitudes: Sequence[float], m: int = 1024, seed: int = 0, channels: int = 16
) -> np.ndarray:
    """The error of the "constants" gradient for $dy = 1 + a\\,\\text{noise}$, per amplitude $a$.

    The true gradient removes the shared 1 and keeps only the noise, of size about $a$; the
    wrong one keeps the 1, so their relative difference is about $1/a$ for large $m$.
    """
    if any(not a > 0 for a in amplitudes):
        raise ValueError(f"noise amplitudes must be positive; got {list(amplitudes)}")
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.ones(channels, dtype=torch.float64)
    x = 3.0 + 2.0 * torch.randn(m, channels, generator=gen, dtype=torch.float64)
    noise = torch.randn(m, channels, generator=gen, dtype=torch.float64)
    return np.array([
        norm_rel_error(constants_gradient(x, gamma, 1.0 + a * noise),
                       _true_gradient(x, gamma, 1.0 + a * noise))
        for a in amplitudes
    ])


# --------------------------------------------------------------------------------------
# Costs: memory saved for backward, bytes moved
# --------------------------------------------------------------------------------------


def _variant(
    variant: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype
) -> tuple[Callable[[], torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """The training-mode forward of ``variant`` on a seeded input, as ``make bench`` runs it.

    Returns ``(forward, x, [gamma, beta])``: torch's and bncourse's layers, or the staged formula.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(True)
    c, ndim = shape[1], len(shape)
    if variant in ("torch", "bncourse"):
        if variant == "bncourse":
            layer: torch.nn.Module = BatchNorm(c, eps=1e-5, dtype=dtype)
        elif ndim in (2, 3):
            layer = torch.nn.BatchNorm1d(c, eps=1e-5, dtype=dtype)
        elif ndim == 4:
            layer = torch.nn.BatchNorm2d(c, eps=1e-5, dtype=dtype)
        else:
            layer = torch.nn.BatchNorm3d(c, eps=1e-5, dtype=dtype)
        layer.train()
        return (lambda: layer(x)), x, [layer.weight, layer.bias]
    if variant == "staged":
        w = torch.ones(c, dtype=dtype, requires_grad=True)
        b = torch.zeros(c, dtype=dtype, requires_grad=True)
        return (lambda: staged_batch_norm(x, w, b, 1e-5)), x, [w, b]
    raise ValueError(f"unknown variant {variant!r}; choose one of torch, bncourse, staged")


def saved_bytes_by_variant(
    shape: tuple[int, ...], variants: Sequence[str] = ("torch", "bncourse", "staged"),
    seed: int = 0, dtype: torch.dtype = torch.float32,
) -> dict[str, SavedTensors]:
    """What autograd keeps for the backward pass of one training-mode forward, per variant."""
    report = {}
    for variant in variants:
        forward, _, _ = _variant(variant, tuple(shape), seed, dtype)
        report[variant] = saved_tensors(forward)
    return report


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches to read or write ``t``: a broadcast tensor is read once."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class _TrafficCounter(TorchDispatchMode):
    """Adds up the bytes of every tensor each aten kernel reads and writes.

    Views (``view``, ``expand``, ``detach``, ``t``, ...) move no data and are skipped: they
    are the ops whose schema returns an alias of an input without writing to it (and
    ``empty``, which only allocates). Every other
    kernel counts as reading each of its tensor arguments once and writing each of its
    outputs once; an in-place op (``mul_``, ``addcmul_``) reads its operands and writes the
    tensor it modifies, so it is counted like any other kernel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        self.kernels = 0
        self.by_kernel: list[tuple[str, int]] = []  # (aten op, bytes), in the order they ran

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if _is_view(func) or func.name().startswith("aten::empty"):
            return out  # an alias of an input, or an uninitialized allocation: no data moves
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs or {}))
                  if isinstance(a, torch.Tensor)]
        outputs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        moved = sum(_nbytes(t) for t in inputs) + sum(_nbytes(t) for t in outputs)
        self.kernels += 1
        self.nbytes += moved
        self.by_kernel.append((func.name(), moved))
        return out


def _is_view(func: Any) -> bool:
    """Whether an aten op returns an alias of an input without writing to it (a view)."""
    if getattr(func, "is_view", False):
        return True
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


def _count_traffic(
    variant: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype
) -> tuple[_TrafficCounter, int]:
    forward, x, params = _variant(variant, tuple(shape), seed, dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    with _TrafficCounter() as counter:
        y = forward()
        torch.autograd.grad(y, [x, *params], dy)
    return counter, x.numel()


def traffic_per_element(
    variant: str, shape: tuple[int, ...] = (256, 64), seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, int]:
    """Bytes read and written per input element by one eager forward and backward; kernels run.

    Every tensor an aten kernel receives is counted as read once and every tensor it returns
    as written once: a lower bound on the memory traffic of the eager implementation. A
    kernel that reads a tensor more than once inside (torch's own, see
    :data:`NATIVE_CPU_PASSES`) moves more than this count says.
    """
    counter, numel = _count_traffic(variant, shape, seed, dtype)
    return counter.nbytes / numel, counter.kernels


def traffic_by_kernel(
    variant: str, shape: tuple[int, ...] = (256, 64), seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[str, float]]:
    """The kernels of :func:`traffic_per_element`, in the order they ran: ``(aten op, bytes
    per input element)`` for each (``"aten::add_.Tensor"``, ...)."""
    counter, numel = _count_traffic(variant, shape, seed, dtype)
    return [(name, nbytes / numel) for name, nbytes in counter.by_kernel]


# --------------------------------------------------------------------------------------
# The benchmark table
# --------------------------------------------------------------------------------------

_TOP_KEYS = ("command", "machine", "load_average", "settings", "confidence", "dtype", "shapes",
             "rows", "paired_ratios")
_MACHINE_KEYS = ("cpu", "cores", "threads", "torch", "python", "date")
_ROW_KEYS = ("shape", "variant", "repeats", "median_ms", "ratio_to_torch", "ratio_low",
             "ratio_high", "saved_bytes")
_RATIO_KEYS = ("median", "low", "high", "n")


def _shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read the table ``make bench`` writes, checking that it has the fields the chapter uses.

    Besides the rows, the table must record the command that regenerates it, the machine
    and its load average before and after the run, the settings, and the paired ratios of
    every two variants on every shape (see :mod:`bncourse.bench`).
    """
    with open(path, encoding="utf-8") as f:
        bench = json.load(f)
    missing = [k for k in _TOP_KEYS if k not in bench]
    missing += [f"machine.{k}" for k in _MACHINE_KEYS if k not in bench.get("machine", {})]
    for i, row in enumerate(bench.get("rows", [])):
        missing += [f"rows[{i}].{k}" for k in _ROW_KEYS if k not in row]
        if row.get("variant") not in VARIANTS:
            missing.append(f"rows[{i}].variant (got {row.get('variant')!r})")
    pairs = bench.get("paired_ratios", {})
    for shape in bench.get("shapes", []):
        key = _shape_key(shape)
        variants = sorted({r["variant"] for r in bench.get("rows", [])
                           if r.get("shape") == list(shape)})
        for a in variants:
            for b in variants:
                if a == b:
                    continue
                record = pairs.get(key, {}).get(f"{a}/{b}")
                if record is None:
                    missing.append(f"paired_ratios.{key}.{a}/{b}")
                else:
                    missing += [f"paired_ratios.{key}.{a}/{b}.{k}" for k in _RATIO_KEYS
                                if k not in record]
    if missing:
        raise ValueError(
            f"{path} is not a benchmark table: missing or invalid {', '.join(missing)}"
        )
    return bench


def bench_ratio(bench: dict[str, Any], shape: Sequence[int], variant: str,
                reference: str = "torch") -> Ratio:
    """The paired ratio ``t_variant / t_reference`` on ``shape`` from the table, as a
    :class:`bncourse.claims.Ratio`: the median over repetitions and its interval."""
    key = _shape_key(shape)
    try:
        r = bench["paired_ratios"][key][f"{variant}/{reference}"]
    except KeyError:
        raise KeyError(f"the benchmark table has no paired ratio {variant}/{reference} "
                       f"for shape {key}") from None
    return Ratio(float(r["median"]), float(r["low"]), float(r["high"]), int(r["n"]),
                 float(bench.get("confidence", 0.95)))


def ratio_over(ratio: Ratio, factor: float) -> Ratio:
    """``ratio`` divided by a constant ``factor`` (its median and both ends of its interval).

    Dividing a paired time ratio by the ratio of the bytes two variants move gives the ratio
    of their times per byte: above one, the first variant takes longer per byte than the
    second.
    """
    if not factor > 0:
        raise ValueError(f"ratio_over: the factor must be positive, got {factor}")
    return Ratio(ratio.median / factor, ratio.low / factor, ratio.high / factor, ratio.n,
                 ratio.confidence)


def achieved_bandwidth(
    bench: dict[str, Any], bytes_per_element: dict[str, float]
) -> list[dict[str, Any]]:
    """$\\text{GB/s} = \\text{bytes per element} \\times n / t$ per table row.

    ``bytes_per_element`` gives, per variant, the bytes a step reads and writes per input
    element (from :func:`traffic_per_element`, or ``COMPILED_PASSES`` times the item
    size for the compiled form); rows of other variants are skipped.
    """
    rows = []
    for row in bench["rows"]:
        if row["variant"] not in bytes_per_element:
            continue
        numel = int(np.prod(row["shape"]))
        moved = bytes_per_element[row["variant"]] * numel
        rows.append({"shape": tuple(row["shape"]), "variant": row["variant"],
                     "median_ms": row["median_ms"],
                     "gb_per_s": moved / (row["median_ms"] * 1e-3) / 1e9})
    return rows


def round_up(value: float, digits: int = 2) -> float:
    """The smallest number with ``digits`` significant digits that is not below ``value``.

    For a bound the text states ("at most 2.7e-06", "within 4.5%"): rounding to nearest
    would print a number below the largest value measured.
    """
    if value <= 0 or not np.isfinite(value):
        raise ValueError(f"round_up: a positive finite value is needed, got {value}")
    step = 10.0 ** (int(np.floor(np.log10(value))) - digits + 1)
    up = np.ceil(value / step - 1e-9) * step
    return float(f"{up:.{digits - 1}e}")


def gradient_consequences(dx: np.ndarray, x_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: $\\sum_i dx_i$ and $\\sum_i dx_i \\hat{x}_i$ over $\\lVert dx\\rVert$."""
    axes = reduction_axes(dx.ndim)
    norm = np.sqrt((dx * dx).sum(axis=axes))
    return dx.sum(axis=axes) / norm, (dx * x_hat).sum(axis=axes) / norm
