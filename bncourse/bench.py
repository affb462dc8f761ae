"""Time and memory of one training step of batch normalization, four ways.

For each shape, one forward and one backward pass (with a fixed upstream gradient ``dy``,
gradients with respect to the input, ``gamma`` and ``beta``) of:

* ``torch``: ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` (PyTorch's native kernel), the
  reference every ratio is taken to;
* ``bncourse``: :class:`bncourse.BatchNorm` (eager, custom autograd Function with the compact
  backward; updates the running statistics, as torch's layer does);
* ``staged``: :func:`bncourse.layer.staged_batch_norm`, autograd through the formula as
  separate tensor ops (mean, variance, normalize, scale, shift);
* ``compiled``: :func:`bncourse.layer.compiled_batch_norm`, the compact formulas through
  ``torch.compile`` (opt-in: the compile time of each shape is reported on its own).

The composite floor (``floor`` in the table, ``floor`` in the JSON, apart from the rows):
:func:`floor_step`, the ATen calls of the layer's eager path, forward with the
running-statistics update and first-order backward, with nothing else (no module, no checks,
no autograd Function), timed in the same interleaved loop. It is the best a layer written
with torch's elementwise and reduction ops reaches: ``bncourse / floor`` is what Python,
autograd and checks cost; ``floor / torch`` is what separate kernels cost against torch's
fused ones, which no rewriting in such ops removes. Passes over input-sized tensors (a
read or a write of one is a pass; :data:`PASSES`):

* torch (``aten/src/ATen/native/cpu/batch_norm_kernel.cpp``): 9. The forward reads x for
  the mean, again for the centred sum of squares, and once more to write y (4); the
  backward reads dy and x for the sums of dy and dy * (x - mean), then dy and x again to
  write dx (5). For an (N, C, H, W) input the statistics loop is scalar, one channel at a
  time; for (N, C) and channels_last it is vectorized along the channels.
* floor, (N, C): 18. Forward: mean (1), x - mean (2), squared in place (2), its mean (1),
  y = x * scale + shift into that buffer (2); backward: sum of dy (1), x * dy (3), its sum
  (1), a * x + b (2), + scale * dy in place (3).
* floor, (N, C, *spatial): 20. Forward: mean (1), x - mean (2), one norm per (sample,
  channel) row (1), times scale (2), plus beta (2); backward: sum of dy (1), x * dy (3), its
  sum (1), a * x (2), + b (2), + scale * dy (3).
* bncourse: the floor's passes, 8 more calls on per-channel vectors or scalars (the
  cancellation guard 4, the running statistics 2 more, as ``mul_`` and ``add_`` where the
  floor calls ``lerp_``, ``num_batches_tracked`` 1, the backward's ``gamma / sigma`` 1), and
  its Python: module, checks, autograd Function and the autograd engine.

Timing: after a warm-up, every repetition runs each variant once, in a random order drawn
afresh for every repetition (seeded), so slow phases of a shared machine hit all variants alike
and no variant always runs after the same one: what a step costs depends on the state the one
before it leaves behind (a variant that frees large buffers just before another allocates
them changes how many pages the allocator must map anew), and an order that only rotates
would give each variant the same predecessor at every repetition.
The table gives each variant's median time and its ratio to torch: the median, over
repetitions, of ``t_variant / t_torch`` within the same repetition (a paired ratio, far
steadier than a ratio of two medians on a noisy machine), with its 95% distribution-free
interval (:func:`bncourse.claims.paired_ratio`). The JSON also keeps that summary for every
ordered pair of variants (``paired_ratios``), so that a text comparing any two of them can
state the spread and assert the order.

A network: the layer inside a small convolutional network (two blocks of convolution, BN
and ReLU; :data:`NET_INPUT` is the batch), one training step (forward, mean-square loss,
backward; no optimizer update), with torch's ``BatchNorm2d``, with ours, and with
``torch.nn.Identity`` in place of BN, each network compiled whole by ``torch.compile``
(inductor) and each eager: six networks, interleaved like the shapes
(:data:`NET_VARIANTS`, ``compiled_network`` in the JSON). Compiled is how a user meets the
layer under the compiler: Dynamo traces it into the network's graph, and inductor fuses it
with the convolutions' neighbours. The JSON keeps the paired ratio ``bncourse / torch``
compiled (``ratio``) and eager (``eager_ratio``), and the step with torch's BN over the step
with ``Identity`` (``bn_over_identity``), whose inverse subtracted from one is BN's share of
torch's step: a layer that alone takes ``r`` times torch's time makes the step about
``1 + share * (r - 1)`` times longer.

The intervals measure the noise within one run, repetition against repetition. Two runs of
unchanged code differ by more than that (the load of the machine, where the allocator puts
the tensors, what else uses the caches), so two tables' intervals may be disjoint.

Record: the JSON names the command that regenerates it (``command``), the number of
repetitions of each shape, the settings, the date, and the machine's load average (one
minute) before and after the run (``load_average``), so that a reader can judge how quiet
the machine was.

Threads: one intra-op thread by default (``--threads`` to change it). On a small machine
shared with other processes, a multi-threaded op waits at its barrier for a thread the OS
has descheduled, which costs a time slice per op: a variant made of many ops (bncourse,
staged) is then charged for the machine's load rather than for its own work, and the
paired ratios scatter over an order of magnitude. One thread measures the work.

Memory: the bytes each variant saves for the backward pass, counted with saved-tensor hooks
(:func:`bncourse.memory.saved_tensors`); deterministic, and tested in ``tests/test_bench.py``.

Device: ``--device cpu`` (the default) or ``--device cuda`` (torch's native layer is then
cuDNN's; every step ends with ``torch.cuda.synchronize()`` so that times are those of the
kernels, and the JSON goes to ``book/data/bench-cuda.json`` unless ``--out`` says otherwise).
``--device cuda`` on a machine without CUDA stops with an error saying so.

Run ``python -m bncourse.bench`` (``make bench``, ``make bench ARGS="--device cuda"``);
``--quick`` for a smoke run, ``--no-compile`` to skip the compiled path and network,
``--shapes 8x4 4x3x5x5`` for other shapes, ``--out PATH`` for the JSON (default
``book/data/bench.json``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .claims import Ratio, paired_ratio
from .layer import BatchNorm, compiled_batch_norm, staged_batch_norm
from .memory import SavedTensors, saved_tensors

__all__ = [
    "SHAPES",
    "VARIANTS",
    "Inputs",
    "make_inputs",
    "make_forward",
    "make_step",
    "floor_step",
    "FLOOR",
    "PASSES",
    "forward_backward",
    "saved_for_backward",
    "Timing",
    "time_shape",
    "conv_net",
    "time_compiled_network",
    "network_record",
    "NET_INPUT",
    "NET_VARIANTS",
    "check_device",
    "machine_info",
    "command_line",
    "run",
    "main",
]

SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 1024), (4096, 256), (64, 64, 32, 32), (16, 256, 14, 14)
)
VARIANTS: tuple[str, ...] = ("torch", "bncourse", "staged", "compiled")
#: The composite floor (:func:`floor_step`): timed with the variants, reported apart.
FLOOR = "floor"
#: Passes over tensors of the input's size (each read or write of one is a pass) in one
#: step: torch's CPU kernels, and the composite floor, which are also the passes of the
#: layer's eager path (see the module docstring).
PASSES: dict[str, int] = {"torch": 9, "floor (N, C)": 18, "floor (N, C, *spatial)": 20}
EPS = 1e-5
#: The batch of the compiled-network comparison: 32 RGB images of 24 x 24.
NET_INPUT: tuple[int, ...] = (32, 3, 24, 24)
#: Channels of the two convolutions in that network.
NET_CHANNELS = 16
#: The networks of that comparison: name -> (BN layer, compiled). ``torch`` and ``bncourse``
#: are compiled; ``identity`` has ``torch.nn.Identity`` in place of BN, to measure BN's share.
NET_VARIANTS: dict[str, tuple[str, bool]] = {
    "torch": ("torch", True), "bncourse": ("bncourse", True), "identity": ("identity", True),
    "torch eager": ("torch", False), "bncourse eager": ("bncourse", False),
    "identity eager": ("identity", False),
}
DEFAULT_OUT = Path("book/data/bench.json")
DEFAULT_OUT_CUDA = Path("book/data/bench-cuda.json")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
PROGRAM = "python -m bncourse.bench"
#: The confidence of the intervals of the paired ratios.
CONFIDENCE = 0.95
#: Decimals kept for ratios and compile times in the JSON: enough that a text which shows two
#: of them never rounds a value that was already rounded near the digit it shows.
RATIO_DECIMALS = 6

# Repetitions: as many as fit in the time budget of a shape, within [min, max]. A paired
# ratio's interval needs at least 6 (bncourse.claims.paired_ratio).
FULL = {"warmup": 10, "budget_s": 30.0, "min_reps": 80, "max_reps": 3000}
QUICK = {"warmup": 2, "budget_s": 1.5, "min_reps": 8, "max_reps": 200}

Forward = Callable[[Tensor], Tensor]


@dataclass
class Inputs:
    """A batch ``x`` (requires grad), per-channel ``gamma`` and ``beta``, an upstream ``dy``."""

    x: Tensor
    gamma: Tensor
    beta: Tensor
    dy: Tensor


def make_inputs(
    shape: Sequence[int], dtype: torch.dtype = torch.float32, seed: int = 0,
    device: str | torch.device = "cpu",
) -> Inputs:
    """Random ``x`` (mean 1, std 2), ``gamma`` near 1, ``beta`` near 0 and ``dy``, seeded.

    The values are drawn on the CPU (the same numbers on every device) and moved to ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = 1.0 + 2.0 * torch.randn(tuple(shape), generator=g, dtype=dtype)
    gamma = 1.0 + 0.1 * torch.randn(c, generator=g, dtype=dtype)
    beta = 0.1 * torch.randn(c, generator=g, dtype=dtype)
    dy = torch.randn(tuple(shape), generator=g, dtype=dtype)
    x, gamma, beta, dy = (t.to(device) for t in (x, gamma, beta, dy))
    return Inputs(x.requires_grad_(), gamma, beta, dy)


def _torch_layer(c: int, ndim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> torch.nn.Module:
    if ndim == 2 or ndim == 3:
        return torch.nn.BatchNorm1d(c, eps=EPS, dtype=dtype, device=device)
    if ndim == 4:
        return torch.nn.BatchNorm2d(c, eps=EPS, dtype=dtype, device=device)
    if ndim == 5:
        return torch.nn.BatchNorm3d(c, eps=EPS, dtype=dtype, device=device)
    raise ValueError(f"torch has no BatchNorm layer for {ndim}-dimensional inputs")


def make_forward(variant: str, inputs: Inputs) -> tuple[Forward, list[Tensor]]:
    """The training-mode forward ``x -> y`` of ``variant`` and its parameters ``[gamma, beta]``.

    Every variant gets its own copy of ``inputs.gamma`` and ``inputs.beta`` as leaf tensors
    that require grad, so all four compute the same function.
    """
    x = inputs.x
    c, dtype, device = x.shape[1], x.dtype, x.device
    if variant in ("torch", "bncourse"):
        layer = _torch_layer(c, x.dim(), dtype, device) if variant == "torch" else BatchNorm(
            c, eps=EPS, dtype=dtype, device=device
        )
        with torch.no_grad():
            layer.weight.copy_(inputs.gamma)
            layer.bias.copy_(inputs.beta)
        layer.train()
        return layer, [layer.weight, layer.bias]
    gamma = inputs.gamma.detach().clone().requires_grad_()
    beta = inputs.beta.detach().clone().requires_grad_()
    if variant == "staged":
        return (lambda t: staged_batch_norm(t, gamma, beta, EPS)), [gamma, beta]
    if variant == "compiled":
        return (lambda t: compiled_batch_norm(t, gamma, beta, EPS)), [gamma, beta]
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def forward_backward(
    forward: Forward, params: list[Tensor], inputs: Inputs
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One training step: ``y = forward(x)``, then ``(dx, dgamma, dbeta)`` for upstream ``dy``.

    Gradients are returned by ``torch.autograd.grad`` (not accumulated into ``.grad``), so
    repeated calls do the same work. Returns ``(y, dx, dgamma, dbeta)``.
    """
    y = forward(inputs.x)
    dx, dgamma, dbeta = torch.autograd.grad(y, [inputs.x, *params], inputs.dy)
    return y, dx, dgamma, dbeta


def floor_step(inputs: Inputs, momentum: float = 0.1) -> Callable[[], tuple[Tensor, ...]]:
    """The composite floor: one training step as bare tensor ops, without autograd.

    The same ATen calls as the eager path of :class:`bncourse.BatchNorm` (forward with the
    running-statistics update, first-order backward), with nothing around them: no module,
    no checks, no autograd Function, no graph; ``gamma``, ``beta`` and the running buffers
    are allocated once, outside the step. No layer made of torch's elementwise and reduction
    ops can do a step in fewer calls and passes, so its ratio to torch is the best such a
    layer reaches; the module docstring counts the passes. Returns a function that runs one
    step and returns ``(y, dx, dgamma, dbeta)``; the running buffers are its attributes
    ``running_mean`` and ``running_var``.
    """
    x, dy = inputs.x.detach(), inputs.dy
    gamma, beta = inputs.gamma.detach().clone(), inputs.beta.detach().clone()
    c = x.shape[1]
    m = x.numel() // c
    dims = [0, *range(2, x.dim())]
    pc = (1, -1) + (1,) * (x.dim() - 2)
    running_mean = torch.zeros(c, dtype=x.dtype, device=x.device)
    running_var = torch.ones(c, dtype=x.dtype, device=x.device)
    unbias, rows, n = m / (m - 1), x.dim() > 2 and x.is_contiguous(), x.shape[0]

    def step() -> tuple[Tensor, ...]:
        with torch.no_grad():
            # forward: statistics, y = x * scale + shift, running statistics
            mean = x.mean(dims)
            buf = x - mean.view(pc)
            if rows:
                var = torch.linalg.vector_norm(buf.view(n * c, -1), dim=1).square_()
                var = var.view(n, c).sum(0).div_(m)
                inv_std = (var + EPS).rsqrt_()
                scale = inv_std * gamma
                y = buf.mul_(scale.view(pc)).add_(beta.view(pc))
            else:
                var = buf.square_().mean(dims)
                inv_std = (var + EPS).rsqrt_()
                scale = inv_std * gamma
                shift = torch.addcmul(beta, mean, scale, value=-1)
                y = torch.addcmul(shift.view(pc), x, scale.view(pc), out=buf)
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * unbias, momentum)
            # backward: the sums of dy and dy * x, then dx = a * x + b + scale * dy
            dbeta = dy.sum(dims)
            prod = x * dy
            dgamma = torch.addcmul(prod.sum(dims), mean, dbeta, value=-1).mul_(inv_std)
            a = (scale * inv_std).mul_(dgamma).mul_(-1.0 / m)
            b = (scale * dbeta).mul_(-1.0 / m).addcmul_(a, mean, value=-1)
            if x.dim() == 2:
                dx = torch.addcmul(b.view(pc), x, a.view(pc), out=prod)
            else:
                dx = torch.mul(x, a.view(pc), out=prod).add_(b.view(pc))
            dx.addcmul_(dy, scale.view(pc))
        return y, dx, dgamma, dbeta

    step.running_mean = running_mean  # type: ignore[attr-defined]
    step.running_var = running_var  # type: ignore[attr-defined]
    return step


def saved_for_backward(variant: str, inputs: Inputs) -> SavedTensors:
    """What the forward pass of ``variant`` saves for its backward pass (shapes and bytes)."""
    forward, _ = make_forward(variant, inputs)
    return saved_tensors(lambda: forward(inputs.x))


@dataclass
class Timing:
    """Per-repetition times (seconds) of each variant on one shape, and its compile time."""

    shape: tuple[int, ...]
    times: dict[str, list[float]]
    compile_seconds: float | None = None

    @property
    def reps(self) -> int:
        return len(self.times["torch"])

    def median_ms(self, variant: str) -> float:
        return 1e3 * statistics.median(self.times[variant])

    def paired_ratio(self, variant: str, reference: str = "torch") -> Ratio:
        """``t_variant / t_reference`` within each repetition: median and 95% interval."""
        return paired_ratio(self.times[variant], self.times[reference],
                            confidence=CONFIDENCE, what=f"{variant} / {reference}")

    def ratio(self, variant: str) -> float:
        """Median over repetitions of ``t_variant / t_torch`` in the same repetition."""
        return self.paired_ratio(variant).median


def _one_step(step: Callable[[], object], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def make_step(variant: str, inputs: Inputs) -> Callable[[], object]:
    """One timed step of ``variant``: forward and backward (:data:`FLOOR` included)."""
    if variant == FLOOR:
        return floor_step(inputs)
    forward, params = make_forward(variant, inputs)
    return lambda: forward_backward(forward, params, inputs)


def time_shape(
    shape: Sequence[int], variants: Sequence[str], settings: dict, seed: int = 0,
    device: str = "cpu",
) -> Timing:
    """Interleaved timing of ``variants`` (which must include ``"torch"``) on one shape."""
    inputs = make_inputs(shape, torch.float32, seed, device)
    cuda = inputs.x.device.type == "cuda"
    steps = {v: make_step(v, inputs) for v in variants}
    compile_seconds = None
    if "compiled" in steps:
        # The first call compiles the forward and the backward for this shape.
        compile_seconds = _one_step(steps["compiled"], cuda)
    warm: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(settings["warmup"]):
        for v in variants:
            warm[v].append(_one_step(steps[v], cuda))
    # Size the run from the warm-up speed: as many repetitions as the budget allows.
    t_rep = sum(statistics.median(warm[v][len(warm[v]) // 2:]) for v in variants)
    reps = int(settings["budget_s"] / max(t_rep, 1e-9))
    reps = max(settings["min_reps"], min(settings["max_reps"], reps))
    times: dict[str, list[float]] = {v: [] for v in variants}
    k = len(variants)
    order = random.Random(0)  # a new order every repetition (see the module's docstring)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    deadline = time.perf_counter() + 2.0 * settings["budget_s"]
    try:
        for i in range(reps):
            if i >= settings["min_reps"] and time.perf_counter() > deadline:
                break  # the machine got slower than the warm-up said; keep the run short
            for v in order.sample(variants, k):
                times[v].append(_one_step(steps[v], cuda))
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(tuple(shape), times, compile_seconds)


def conv_net(bn: Callable[[int], torch.nn.Module], channels: int = NET_CHANNELS,
             seed: int = 0, device: str | torch.device = "cpu") -> torch.nn.Sequential:
    """Two blocks of 3x3 convolution, ``bn(channels)`` and ReLU, on 3-channel images.

    The convolutions' weights depend only on ``seed``, so two networks built with different
    ``bn`` layers compute the same function.
    """
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(NET_INPUT[1], channels, 3, padding=1), bn(channels), torch.nn.ReLU(),
        torch.nn.Conv2d(channels, channels, 3, padding=1), bn(channels), torch.nn.ReLU(),
    ).to(device)


def _net_step(net: Callable[[Tensor], Tensor], params: list[Tensor], x: Tensor) -> float:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in params:
        p.grad = None
    net(x).square().mean().backward()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _net_bn(kind: str) -> Callable[[int], torch.nn.Module]:
    if kind == "torch":
        return torch.nn.BatchNorm2d
    if kind == "bncourse":
        return BatchNorm
    if kind == "identity":
        return lambda channels: torch.nn.Identity()
    raise ValueError(f"unknown BN layer {kind!r} for the network; expected one of "
                     f"{sorted({k for k, _ in NET_VARIANTS.values()})}")


def time_compiled_network(settings: dict, seed: int = 0, device: str = "cpu") -> Timing:
    """One training step of :func:`conv_net`: compiled whole and eager, each BN layer.

    The six networks of :data:`NET_VARIANTS` (torch's BN, ours and ``Identity`` in its
    place; each compiled with ``torch.compile``, inductor, ``fullgraph=True`` so that a graph
    break would raise, and each eager) are timed in one interleaved loop, so that every
    paired ratio between them is taken within the same repetitions. ``compile_seconds`` is
    the first step of the two compiled networks with a BN layer.
    """
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(NET_INPUT, generator=g).to(device)
    reference = conv_net(torch.nn.BatchNorm2d, seed=seed, device=device).state_dict()
    steps: dict[str, tuple[Callable[[Tensor], Tensor], list[Tensor]]] = {}
    for v, (kind, compiled) in NET_VARIANTS.items():
        net = conv_net(_net_bn(kind), seed=seed, device=device)
        # Same convolutions everywhere; the BN layers start from torch's (Identity has none).
        net.load_state_dict(reference, strict=kind != "identity")
        steps[v] = (torch.compile(net, fullgraph=True) if compiled else net,
                    list(net.parameters()))
    t0 = time.perf_counter()
    for v in ("torch", "bncourse"):
        _net_step(*steps[v], x)
    compile_seconds = time.perf_counter() - t0
    variants = list(steps)
    for _ in range(settings["warmup"]):
        for v in variants:
            _net_step(*steps[v], x)
    times: dict[str, list[float]] = {v: [] for v in variants}
    t_rep = sum(_net_step(*steps[v], x) for v in variants)
    reps = int(settings["budget_s"] / max(t_rep, 1e-9))
    reps = max(settings["min_reps"], min(settings["max_reps"], reps))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        order = random.Random(0)
        for _ in range(reps):
            for v in order.sample(variants, len(variants)):
                times[v].append(_net_step(*steps[v], x))
    finally:
        if gc_was_enabled:
            gc.enable()
    torch._dynamo.reset()
    return Timing(tuple(NET_INPUT), times, compile_seconds)


def network_record(timing: Timing) -> dict:
    """The ``compiled_network`` entry of the JSON from :func:`time_compiled_network`'s timing.

    ``ratio``: compiled, ours over torch's; ``eager_ratio``: the same, both networks eager;
    ``bn_over_identity``: the step with torch's BN over the step with ``Identity`` in its
    place, compiled and eager (BN's share of torch's step is one minus its inverse).
    """
    return {
        "description": f"conv{NET_CHANNELS}-BN-ReLU twice; one training step (forward, "
                       f"mean-square loss, backward; no optimizer update); compiled with "
                       f"torch.compile (inductor, fullgraph) and eager",
        "input": list(NET_INPUT),
        "repeats": timing.reps,
        "median_ms": {v: round(timing.median_ms(v), 4) for v in timing.times},
        "ratio": _ratio_record(timing.paired_ratio("bncourse", "torch")),
        "eager_ratio": _ratio_record(timing.paired_ratio("bncourse eager", "torch eager")),
        "bn_over_identity": {
            "compiled": _ratio_record(timing.paired_ratio("torch", "identity")),
            "eager": _ratio_record(timing.paired_ratio("torch eager", "identity eager")),
        },
        "compile_seconds": round(float(timing.compile_seconds or 0.0), RATIO_DECIMALS),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_device(device: str) -> None:
    """Refuse a device this machine cannot run, with a message that says why."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: CUDA is not available here (torch.cuda.is_available() is False: "
            f"no GPU, or torch {torch.__version__} was built without CUDA). Run on a machine "
            "with an NVIDIA GPU and a CUDA build of torch, or use --device cpu"
        )


def machine_info(device: str = "cpu") -> dict:
    """CPU model, logical cores, torch's intra-op threads, the device, versions and the date.

    ``device`` is ``"cpu"``, or the GPU's name when the benchmark ran on CUDA.
    """
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu": _cpu_name(),
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def command_line(
    shapes: Sequence[Sequence[int]] = SHAPES, quick: bool = False, compile: bool = True,
    out: Path | str | None = DEFAULT_OUT, seed: int = 0, device: str = "cpu",
    threads: int = 1,
) -> str:
    """The command, run from the repository root, that repeats a run with these settings.

    Options equal to their defaults are left out, so the standard table's command is
    ``python -m bncourse.bench``.
    """
    args: list[str] = []
    if quick:
        args.append("--quick")
    if not compile:
        args.append("--no-compile")
    if [tuple(int(d) for d in s) for s in shapes] != list(SHAPES):
        args += ["--shapes", *(shape_key(s) for s in shapes)]
    default_out = DEFAULT_OUT_CUDA if device == "cuda" else DEFAULT_OUT
    if out is not None and Path(out) != default_out:
        args += ["--out", str(out)]
    if device != "cpu":
        args += ["--device", device]
    if threads != 1:
        args += ["--threads", str(threads)]
    if seed != 0:
        args += ["--seed", str(seed)]
    return " ".join([PROGRAM, *(shlex.quote(a) for a in args)])


def _load_average() -> float | None:
    """The one-minute load average (None where the OS does not report one)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _ratio_record(r: Ratio) -> dict:
    return {"median": round(r.median, RATIO_DECIMALS), "low": round(r.low, RATIO_DECIMALS),
            "high": round(r.high, RATIO_DECIMALS),
            "n": r.n}


def _print_row(cells: Sequence[str], widths: Sequence[int]) -> None:
    pairs = enumerate(zip(cells, widths, strict=True))
    padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
    print("  ".join(padded))


def _warm_up_compiler(device: str = "cpu") -> float:
    """Compile a tiny problem once, so that no shape's compile time includes start-up."""
    t0 = time.perf_counter()
    inputs = make_inputs((2, 2), device=device)
    forward_backward(*make_forward("compiled", inputs), inputs)
    return time.perf_counter() - t0


def run(
    shapes: Sequence[Sequence[int]] = SHAPES,
    quick: bool = False,
    compile: bool = True,
    out: Path | str | None = DEFAULT_OUT,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Benchmark every variant on every shape, print the table, write the JSON; return it."""
    check_device(device)
    settings = QUICK if quick else FULL
    variants = [v for v in VARIANTS if compile or v != "compiled"]
    shapes = [tuple(int(d) for d in s) for s in shapes]
    command = command_line(shapes, quick, compile, out, seed, device, torch.get_num_threads())
    load_before = _load_average()
    rows: list[dict] = []
    pairs: dict[str, dict[str, dict]] = {}
    compile_seconds: dict[str, float] = {}
    floor: dict[str, dict] = {}
    widths = (18, 9, 10, 7, 15, 9, 12)
    header = ("shape", "variant", "median ms", "ratio", "95% interval", "saved MB",
              "act. saved")
    n_threads = torch.get_num_threads()
    where = (f"{torch.cuda.get_device_name()}" if device == "cuda"
             else f"cpu, {n_threads} thread{'s' if n_threads != 1 else ''}")
    print(f"{command}\nforward + backward, float32, {where}, "
          f"{'quick' if quick else 'full'} run; ratio = median paired t / t_torch; "
          f"load average {load_before}")
    cache_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    cache_dir = None
    if compile:
        # A fresh on-disk cache, so the compile times are cold ones (no kernels reused from
        # an earlier run); removed at the end.
        cache_dir = tempfile.mkdtemp(prefix="bncourse-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        startup = _warm_up_compiler(device)
        print(f"compiler start-up (imports and a 2x2 compile, not in any row): {startup:.2f} s")
    _print_row(header, widths)
    try:
        _run_shapes(shapes, variants, settings, seed, widths, rows, pairs, compile_seconds,
                    floor, device)
    finally:
        if cache_dir is not None:
            if cache_env is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_env
            shutil.rmtree(cache_dir, ignore_errors=True)
    for key, seconds in compile_seconds.items():
        print(f"compile time {key}: {seconds:.2f} s (first forward + backward, not in the table)")
    network = None
    if compile:
        network = network_record(time_compiled_network(settings, seed, device))
        r, e = network["ratio"], network["eager_ratio"]
        share = {k: 1 - 1 / b["median"] for k, b in network["bn_over_identity"].items()}
        print(f"network ({network['description']}, input {shape_key(NET_INPUT)}), "
              f"{network['repeats']} interleaved repetitions:\n"
              f"  compiled: bncourse / torch {r['median']:.3f} ({r['low']:.3f}-{r['high']:.3f}),"
              f" torch {network['median_ms']['torch']:.3f} ms; BN {100 * share['compiled']:.0f}%"
              f" of torch's step\n"
              f"  eager:    bncourse / torch {e['median']:.3f} ({e['low']:.3f}-{e['high']:.3f}),"
              f" torch {network['median_ms']['torch eager']:.3f} ms; BN "
              f"{100 * share['eager']:.0f}% of torch's step")
    load_after = _load_average()
    print(f"load average {load_before} before the run, {load_after} after")
    result = {
        "command": command,
        "machine": machine_info(device),
        "load_average": [load_before, load_after],
        "settings": {"quick": quick, **settings},
        "confidence": CONFIDENCE,
        "dtype": "float32",
        "shapes": [list(s) for s in shapes],
        "rows": rows,
        "paired_ratios": pairs,
        "compile_seconds": compile_seconds,
        "floor": {"passes": dict(PASSES), "shapes": floor},
        "compiled_network": network,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


def _run_shapes(
    shapes: list[tuple[int, ...]],
    variants: list[str],
    settings: dict,
    seed: int,
    widths: Sequence[int],
    rows: list[dict],
    pairs: dict[str, dict[str, dict]],
    compile_seconds: dict[str, float],
    floor: dict[str, dict],
    device: str = "cpu",
) -> None:
    for shape in shapes:
        timing = time_shape(shape, [*variants, FLOOR], settings, seed, device)
        inputs = make_inputs(shape, torch.float32, seed, device)
        numel = inputs.x.numel()
        pairs[shape_key(shape)] = {
            f"{a}/{b}": _ratio_record(timing.paired_ratio(a, b))
            for a in variants for b in variants if a != b
        }
        floor[shape_key(shape)] = {
            "median_ms": round(timing.median_ms(FLOOR), 4),
            **{f"{a}/{b}": _ratio_record(timing.paired_ratio(a, b))
               for a, b in ((FLOOR, "torch"), ("bncourse", FLOOR)) if a in timing.times
               and b in timing.times},
        }
        for v in variants:
            saved = saved_for_backward(v, inputs)
            ratio = timing.paired_ratio(v)
            row = {
                "shape": list(shape),
                "variant": v,
                "repeats": timing.reps,
                "median_ms": round(timing.median_ms(v), 4),
                "ratio_to_torch": round(ratio.median, RATIO_DECIMALS),
                "ratio_low": round(ratio.low, RATIO_DECIMALS),
                "ratio_high": round(ratio.high, RATIO_DECIMALS),
                "saved_bytes": int(saved.nbytes),
            }
            rows.append(row)
            _print_row(
                (
                    shape_key(shape) if v == variants[0] else "",
                    v,
                    f"{row['median_ms']:.3f}",
                    f"{row['ratio_to_torch']:.2f}",
                    f"{row['ratio_low']:.2f}-{row['ratio_high']:.2f}",
                    f"{saved.nbytes / 2**20:.2f}",
                    str(saved.activation_sized(numel)),
                ),
                widths,
            )
        f = timing.paired_ratio(FLOOR)
        _print_row(("", FLOOR, f"{timing.median_ms(FLOOR):.3f}", f"{f.median:.2f}",
                    f"{f.low:.2f}-{f.high:.2f}", "", ""), widths)
        print(f"{'':{widths[0]}}  ({timing.reps} interleaved repetitions)")
        if timing.compile_seconds is not None:
            compile_seconds[shape_key(shape)] = round(timing.compile_seconds, RATIO_DECIMALS)
        sys.stdout.flush()


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is written like 256x1024; got {text!r}"
        ) from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"a shape needs at least (N, C), all positive; got {text!r}"
        )
    return shape


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bncourse.bench",
        description="Time forward + backward of batch normalization: torch, bncourse, "
        "staged autograd and compiled; print the table and write the JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled path")
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, default=None,
                        metavar="NxC[xHxW]", help="shapes to run (default: the four standard)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the JSON (default {DEFAULT_OUT}, "
                        f"{DEFAULT_OUT_CUDA} with --device cuda)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where to run: cpu (default) or cuda (needs a GPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: see the module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}")
    try:
        check_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    out = args.out
    if out is None:
        out = DEFAULT_OUT_CUDA if args.device == "cuda" else DEFAULT_OUT
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        run(
            shapes=args.shapes or SHAPES,
            quick=args.quick,
            compile=not args.no_compile,
            out=out,
            seed=args.seed,
            device=args.device,
        )
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
