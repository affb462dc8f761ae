r"""Batch normalization across processes: synchronized BN from scratch on ``torch.distributed``.

A batch split across $P$ processes gives each process a local batch; batch normalization on
the global batch needs, per channel, statistics of the union. What must travel:

* **forward**: each process's count $n_k$, mean $\bar{x}_k$ and sum of squared deviations
  $M_{2,k} = \sum_i (x_i - \bar{x}_k)^2$, merged pairwise with :func:`merge_moments`
  (Chan, Golub and LeVeque's update), never as a sum and a sum of squares (see
  :func:`bncourse.normalization.one_pass_variance`);
* **backward**: the global sums $\sum dy$ and $\sum dy\,\hat{x}$ that the compact backward
  needs; the gradients of $\gamma$ and $\beta$ stay local and are summed (averaged) by data
  parallelism like every other parameter's.

:class:`SyncBatchNorm` is a drop-in for :class:`bncourse.BatchNorm` that does this with
``all_gather`` (forward) and ``all_reduce`` (backward) on any process group, including
gloo on CPU, where ``torch.nn.SyncBatchNorm`` refuses to train.

Launching: :func:`launch` starts ``world_size`` processes with ``torch.multiprocessing``
(spawn), joins them into a gloo group on 127.0.0.1 at a free port chosen at run time, runs a
module-level function in each and returns what each returned. Every launch is bounded in
time; a worker that raises makes :func:`launch` raise with the worker's traceback, and no
process outlives the call.

``python -m bncourse.distributed bench`` measures the time per training step against the
number of processes and writes ``book/data/distributed_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .layer import (
    BatchNorm,
    _check_channels,
    _check_dtypes,
    _check_input,
    _compute_dtype,
    _no_autocast,
    _per_channel,
    batch_norm,
)

__all__ = [
    "merge_moments",
    "local_moments",
    "merge_all",
    "SyncBatchNormFunction",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "free_port",
    "launch",
    "WorkerError",
    "parity_worker",
    "ddp_worker",
    "error_worker",
    "suite_worker",
    "single_process_reference",
    "ddp_reference",
    "RESNET50_BN_CHANNELS",
    "resnet50_bn_channels",
    "resnet50_parameter_count",
    "sync_values_per_step",
    "sync_bytes_per_step",
    "ring_allreduce_bytes_received",
    "sync_bytes_received_per_step",
    "accumulation_gap",
    "batch_size_sweep",
    "ghost_vs_sub_batches",
    "bench",
    "main",
]


# --------------------------------------------------------------------------------------
# Moments and their pairwise merge
# --------------------------------------------------------------------------------------


def _count(n: Any, what: str) -> int:
    if isinstance(n, Tensor):
        n = n.item()
    if isinstance(n, (bool, np.bool_)) or not float(n).is_integer() or n < 0:
        raise ValueError(f"{what} must be a non-negative integer count; got {n!r}")
    return int(n)


def merge_moments(a: tuple, b: tuple) -> tuple:
    r"""Merge two ``(count, mean, M2)`` triples into the triple of the union.

    With $n = n_a + n_b$ and $\delta = \bar{x}_b - \bar{x}_a$:
    $\bar{x} = \bar{x}_a + \delta\, n_b/n$ and
    $M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n$ (Chan, Golub and LeVeque). ``M2`` is the
    sum of squared deviations from the mean, so the biased variance is ``M2 / n``. Means and
    M2 may be NumPy arrays or tensors (one entry per channel); counts are integers. A part
    with count 0 contributes nothing (its mean and M2 are ignored).
    """
    if len(a) != 3 or len(b) != 3:
        raise ValueError("merge_moments takes two (count, mean, M2) triples")
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n_a, n_b = _count(n_a, "the first count"), _count(n_b, "the second count")
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(count, mean, M2)`` per channel of ``x`` over axis 0 and the spatial axes (two-pass).

    An empty batch gives count 0 and zero means and M2.
    """
    c = x.shape[1]
    n = x.numel() // c if c else 0
    if n == 0:
        zeros = x.new_zeros(c)
        return 0, zeros, zeros.clone()
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    centred = x - _per_channel(mean, x)
    return n, mean, (centred * centred).sum(dim=dims)


def merge_all(parts: Sequence[tuple]) -> tuple:
    """Fold :func:`merge_moments` over ``parts`` from left to right."""
    if not parts:
        raise ValueError("merge_all needs at least one (count, mean, M2) triple")
    total = parts[0]
    for part in parts[1:]:
        total = merge_moments(total, part)
    return total


# --------------------------------------------------------------------------------------
# The synchronized layer
# --------------------------------------------------------------------------------------


def _require_group(group: Any) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "SyncBatchNorm in training mode needs an initialized process group: call "
            "torch.distributed.init_process_group (or run under bncourse.distributed.launch) "
            "first, or use bncourse.BatchNorm in a single process"
        )
    if group is not None and dist.get_rank(group) < 0:
        raise ValueError(
            f"SyncBatchNorm: this process (global rank {dist.get_rank()}) is not a member of "
            f"the layer's process_group; give each process a group that contains it"
        )


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the union of the local batches of a process group.

    ``forward(x, weight, bias, eps, group) -> (y, mean, var, count)``: ``mean`` and ``var``
    (biased) are the global batch statistics and ``count`` the global number of values per
    channel, as non-differentiable outputs. Collectives: one ``all_gather`` of two integers
    (channels and local count, to check the ranks agree), one ``all_gather`` of the local
    mean and M2 (2C values) in the forward; one ``all_reduce`` of the local sums of dy and
    dy * x_hat (2C values) in the backward. The returned gradients of ``weight`` and ``bias``
    are the local sums; data parallelism adds them up across processes. The backward is
    first-order only (a second derivative raises instead of coming out wrong).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):  # type: ignore[override]
        world = dist.get_world_size(group)
        c = x.shape[1]
        # float16/bfloat16 inputs: statistics, x_hat and sums in float32, as in BatchNorm.
        compute = _compute_dtype(x.dtype)
        xc = x.to(compute)
        n_local, mean_local, m2_local = local_moments(xc)
        meta = torch.tensor([c, n_local], dtype=torch.int64)
        metas = [torch.empty_like(meta) for _ in range(world)]
        dist.all_gather(metas, meta, group=group)
        channels = [int(m[0]) for m in metas]
        counts = [int(m[1]) for m in metas]
        if len(set(channels)) > 1:
            listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(channels))
            raise ValueError(
                f"SyncBatchNorm: the processes disagree on the number of channels ({listing}); "
                f"every process must feed the layer inputs with the same C"
            )
        n = sum(counts)
        if n < 2:
            raise ValueError(
                f"SyncBatchNorm: the global batch holds {n} value(s) per channel (local counts "
                f"{counts}); training-mode batch normalization needs at least 2"
            )
        stats = torch.stack([mean_local, m2_local])
        gathered = [torch.empty_like(stats) for _ in range(world)]
        dist.all_gather(gathered, stats, group=group)
        _, mean, m2 = merge_all([(k, g[0], g[1]) for k, g in zip(counts, gathered, strict=True)])
        var = m2 / n
        inv_std = torch.rsqrt(var + eps)
        x_hat = xc - _per_channel(mean, xc)
        x_hat.mul_(_per_channel(inv_std, xc))
        # y = x_hat * gamma + beta in one pass where both are present (no extra temporaries).
        if weight is not None and bias is not None:
            y = torch.addcmul(_per_channel(bias.to(compute), xc), x_hat,
                              _per_channel(weight.to(compute), xc))
        elif weight is not None:
            y = x_hat * _per_channel(weight.to(compute), xc)
        elif bias is not None:
            y = x_hat + _per_channel(bias.to(compute), xc)
        else:
            y = x_hat.clone()
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.n = n
        ctx.group = group
        ctx.x_dtype = x.dtype
        count = torch.tensor(n, dtype=torch.int64)
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar, _dcount):  # type: ignore[override]
        x_hat, inv_std, weight = ctx.saved_tensors
        dy = dy.to(x_hat.dtype)
        dims = [0, *range(2, x_hat.dim())]
        dbeta = dy.sum(dim=dims)
        dgamma = (dy * x_hat).sum(dim=dims)
        sums = torch.stack([dbeta, dgamma])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
        scale = inv_std if weight is None else inv_std * weight.to(inv_std.dtype)
        k = scale / ctx.n
        # dx = scale * dy - k * sum(dy) - x_hat * k * sum(dy x_hat), in two passes.
        dx = torch.addcmul(_per_channel(-k * sums[0], dy), dy, _per_channel(scale, dy))
        dx.addcmul_(x_hat, _per_channel(-k * sums[1], dy))
        param_dtype = weight.dtype if weight is not None else x_hat.dtype
        return (
            dx.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None,
            dgamma.to(param_dtype) if ctx.needs_input_grad[1] else None,
            dbeta.to(param_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


class SyncBatchNorm(BatchNorm):
    """:class:`bncourse.BatchNorm` whose training-mode statistics are those of the global batch.

    The global batch is the union of the local batches of ``process_group`` (``None``: the
    default group). Same parameters, buffers and state_dict as :class:`bncourse.BatchNorm`;
    the running variance stores the global unbiased variance ``M2 / (n - 1)``. A process
    may hold an empty local batch as long as the global batch has 2 values per channel. In
    eval mode nothing is communicated: the running statistics normalize, as in BN, and a
    layer without running statistics (``track_running_stats=False``) normalizes with this
    process's own batch statistics, as ``torch.nn.SyncBatchNorm`` does.

    Every rank of the group must call the layer with the same number of channels. A rank
    whose input disagrees with its *own* layer's ``num_features`` raises at once, before
    any collective, and its peers then wait in the first collective until the group's
    timeout; ranks whose layers disagree with each other fail together with a clear error.
    float16/bfloat16 inputs are normalized with float32 statistics and returned in their own
    dtype; parameters and buffers follow torch's dtype rule (the input's dtype, or float32
    under a reduced-precision input).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        _check_channels(x, self.num_features)
        _check_dtypes(x, weight=self.weight, bias=self.bias, running_mean=self.running_mean,
                      running_var=self.running_var)
        if not self.training:
            # Eval mode never communicates: the running statistics normalize, or, for a layer
            # without them (track_running_stats=False), this process's own batch statistics,
            # as torch.nn.SyncBatchNorm does.
            if self.running_mean is None:
                return batch_norm(x, None, None, self.weight, self.bias, training=True,
                                  eps=self.eps)
            return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=False, eps=self.eps)
        _require_group(self.process_group)
        with _no_autocast(x):
            y, mean, var, count = SyncBatchNormFunction.apply(
                x, self.weight, self.bias, self.eps, self.process_group)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = float(self.momentum)
            n = int(count)
            with torch.no_grad():
                rm, rv = self.running_mean, self.running_var
                rm.mul_(1.0 - factor).add_(mean.to(rm.dtype), alpha=factor)
                rv.mul_(1.0 - factor).add_((var * (n / (n - 1))).to(rv.dtype), alpha=factor)
        return y


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every :class:`bncourse.BatchNorm` and ``torch.nn.BatchNorm*d`` in ``module``.

    Each becomes a :class:`SyncBatchNorm` with the same settings and the very same parameter
    and buffer objects (same dtype, device and ``requires_grad``). Returns the converted
    module (the input itself when it has children, a new layer when ``module`` is a BN
    layer).
    """
    if isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm)) and not isinstance(
        module, SyncBatchNorm
    ):
        ref = module.weight if module.affine else module.running_mean
        kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group=process_group, **kwargs)
        # The same Parameter and buffer objects, not copies: no rounding through another
        # dtype, requires_grad kept (a frozen BN stays frozen), and an optimizer built before
        # the conversion still holds the model's parameters.
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, process_group))
    return module


# --------------------------------------------------------------------------------------
# Launching processes
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record_failure(outdir: str, rank: int) -> None:
    with open(os.path.join(outdir, f"rank{rank}.err"), "w", encoding="utf-8") as f:
        f.write(f"{time.time()!r}\n{traceback.format_exc()}")


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple,
           outdir: str, timeout: float) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except BaseException:
        _record_failure(outdir, rank)
        raise
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    except BaseException:
        # Recorded before the group closes, so the first failure has the earliest time: the
        # others are usually its consequence (a peer that left in the middle of a collective).
        _record_failure(outdir, rank)
        raise
    finally:
        dist.destroy_process_group()


class WorkerError(RuntimeError):
    """A worker of :func:`launch` raised; the message holds every failed worker's traceback."""


def _worker_errors(outdir: str, world_size: int) -> str:
    failures = []
    for r in range(world_size):
        path = os.path.join(outdir, f"rank{r}.err")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                when, _, text = f.read().partition("\n")
            failures.append((float(when), r, text))
    failures.sort()
    # The earliest record is always labelled, whether or not the other ranks had time to write
    # theirs before they were stopped: the label does not depend on that race.
    return "\n".join(
        f"--- rank {r}{' (failed first)' if i == 0 else ''} ---\n{text}"
        for i, (_, r, text) in enumerate(failures)
    )


def _stop(processes: Sequence[Any]) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _port_taken(details: str) -> bool:
    return "ddress already in use" in details or "EADDRINUSE" in details


def launch(fn: Callable[..., Any], world_size: int, args: tuple = (),
           timeout: float = 60.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes; return the results.

    ``fn`` must be a module-level function (spawned processes import it by name) and return
    something ``torch.save`` can store. The processes form a gloo group on 127.0.0.1 at a
    free port, with one intra-op thread each (``OMP_NUM_THREADS=1``). If a worker raises,
    the others are stopped and this raises :class:`WorkerError`, whose message holds the
    traceback of every worker that recorded a failure, the earliest first and labelled
    ``(failed first)``; if the run takes longer
    than ``timeout`` seconds, every worker is stopped and this raises ``TimeoutError``. No
    process outlives the call. (A port taken by another program between its choice and the
    rendezvous is retried once with a new port.)
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer; got {world_size!r}")
    deadline = time.monotonic() + timeout
    for attempt in range(2):
        try:
            return _launch_once(fn, world_size, tuple(args), timeout, deadline)
        except WorkerError as e:
            if attempt == 0 and _port_taken(str(e)):
                continue
            raise
    raise AssertionError("unreachable")


def _launch_once(fn: Callable[..., Any], world_size: int, args: tuple, timeout: float,
                 deadline: float) -> list[Any]:
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                             "GLOO_SOCKET_IFNAME")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if sys.platform.startswith("linux") and saved["GLOO_SOCKET_IFNAME"] is None:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on the loopback interface
    with tempfile.TemporaryDirectory(prefix="bncourse-dist-") as outdir:
        before = set(multiprocessing.active_children())
        try:
            context = mp.start_processes(
                _entry, args=(fn, world_size, free_port(), args, outdir, timeout),
                nprocs=world_size, join=False, start_method="spawn",
            )
        except BaseException:
            # Starting failed partway: stop the workers that did start.
            _stop([p for p in multiprocessing.active_children() if p not in before])
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            while not context.join(timeout=0.05):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the {world_size} worker(s) of {fn.__name__} did not finish within "
                        f"{timeout:g} s and were stopped"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            _stop(context.processes)
            details = _worker_errors(outdir, world_size) or str(e)
            raise WorkerError(f"a worker of {fn.__name__} failed:\n{details}") from e
        finally:
            _stop(context.processes)
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False)
                for r in range(world_size)]


# --------------------------------------------------------------------------------------
# Workers: parity with single-process BN, DDP, bad input
# --------------------------------------------------------------------------------------


def _global_batch(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2.0 + 3.0
    dy = torch.randn(shape, generator=g, dtype=dtype)
    return x, dy


def _params(seed: int, c: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.rand(c, generator=g, dtype=dtype) + 0.5,
            torch.randn(c, generator=g, dtype=dtype))


def _split(t: Tensor, sizes: Sequence[int], rank: int) -> Tensor:
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def _case_steps(layer: nn.Module, case: dict, rank: int | None,
                ranks: Sequence[int] | None = None) -> dict[str, Any]:
    """Run a parity case on ``layer``: ``steps`` forward/backward passes, record everything.

    ``rank``: this process's slice of the global batch; ``None`` with ``ranks``: the
    concatenated slices of those ranks; ``None`` alone: the whole global batch.
    """
    dtype = torch.float64
    shape = (sum(case["sizes"]), *case["shape"])
    w, b = _params(case["seed"], shape[1], dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    out: dict[str, Any] = {"y": [], "dx": [], "dgamma": [], "dbeta": []}
    for step in range(case["steps"]):
        x, dy = _global_batch(case["seed"] + 100 * step, shape, dtype)
        if rank is not None:
            x, dy = _split(x, case["sizes"], rank), _split(dy, case["sizes"], rank)
        elif ranks is not None:
            x = torch.cat([_split(x, case["sizes"], r) for r in ranks])
            dy = torch.cat([_split(dy, case["sizes"], r) for r in ranks])
        x = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        y.backward(dy)
        out["y"].append(y.detach())
        out["dx"].append(x.grad.detach())
        out["dgamma"].append(layer.weight.grad.detach().clone())
        out["dbeta"].append(layer.bias.grad.detach().clone())
    out["running_mean"] = layer.running_mean.clone()
    out["running_var"] = layer.running_var.clone()
    layer.eval()
    x, _ = _global_batch(case["seed"] + 999, shape, dtype)
    if rank is not None:
        x = _split(x, case["sizes"], rank)
    elif ranks is not None:
        x = torch.cat([_split(x, case["sizes"], r) for r in ranks])
    out["eval"] = layer(x).detach()
    return out


def parity_worker(rank: int, world_size: int, cases: Sequence[dict]) -> list[dict[str, Any]]:
    """Run each parity case with :class:`SyncBatchNorm` on this rank's slice of the batch.

    A case is ``{"sizes": local batch sizes, one per rank, "shape": (C, *spatial), "seed",
    "steps", "momentum"}`` and optionally ``"groups"``, a partition of the ranks into process
    groups (``[[0, 1], [2, 3]]``), each synchronizing only within itself. Returns per case
    the local outputs, input gradients, gamma and beta gradients of every step, the running
    statistics and an eval-mode output.
    """
    results = []
    for case in cases:
        if len(case["sizes"]) != world_size:
            raise ValueError(f"case {case} has {len(case['sizes'])} sizes for {world_size} ranks")
        group = None
        for ranks in case.get("groups", ()):
            made = dist.new_group(list(ranks))  # every rank must create every group
            if rank in ranks:
                group = made
        layer = SyncBatchNorm(case["shape"][0], momentum=case["momentum"], dtype=torch.float64,
                              process_group=group)
        results.append(_case_steps(layer, case, rank))
    return results


def single_process_reference(case: dict, ranks: Sequence[int] | None = None) -> dict[str, Any]:
    """The same case run by :class:`bncourse.BatchNorm` on the concatenated global batch.

    With ``ranks``, on the concatenation of those ranks' slices only (one process group).
    """
    layer = BatchNorm(case["shape"][0], momentum=case["momentum"], dtype=torch.float64)
    return _case_steps(layer, case, None, ranks)


def error_worker(rank: int, world_size: int) -> dict[str, str]:
    """Feed :class:`SyncBatchNorm` bad input on every rank; return the error messages.

    ``"channels"``: the ranks disagree on C; ``"empty"``: every rank's batch is empty;
    ``"one_value"``: the global batch holds a single value per channel. The group stays
    usable after each error, which the final all-reduce shows.
    """
    messages = {}
    attempts = {
        "channels": lambda: SyncBatchNorm(3 + rank)(torch.randn(4, 3 + rank)),
        "empty": lambda: SyncBatchNorm(3)(torch.randn(0, 3)),
        "one_value": lambda: SyncBatchNorm(3)(torch.randn(1 if rank == 0 else 0, 3)),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except ValueError as e:
            messages[name] = str(e)
        else:
            messages[name] = ""
    alive = torch.ones(1)
    dist.all_reduce(alive)
    messages["group_alive"] = str(int(alive.item()))
    return messages


def _small_model(seed: int, bn: Callable[[int], nn.Module]) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), bn(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6), bn(6), nn.ReLU(), nn.Linear(6, 3),
    ).double()


def _ddp_data(seed: int, n: int, step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed + step)
    return (torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def _train_steps(model: nn.Module, steps: int, seed: int, n: int, sizes: Sequence[int] | None,
                 rank: int | None, lr: float) -> dict[str, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = _ddp_data(seed, n, step)
        if rank is not None and sizes is not None:
            x, y = _split(x, sizes, rank), _split(y, sizes, rank)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    inner = model.module if hasattr(model, "module") else model
    return {"state": {k: v.detach().clone() for k, v in inner.state_dict().items()},
            "losses": losses}


def ddp_worker(rank: int, world_size: int, steps: int, seed: int, n: int,
               lr: float = 0.1) -> dict[str, Any]:
    """Train :func:`_small_model` with SyncBatchNorm under ``DistributedDataParallel``.

    The global batch of ``n`` examples is split into equal local batches (the DDP average
    of local mean losses is then the global mean loss). Returns the final state_dict and
    the local losses.
    """
    if n % world_size:
        raise ValueError(f"the global batch {n} must split evenly over {world_size} processes")
    model = _small_model(seed, lambda c: SyncBatchNorm(c))
    ddp = nn.parallel.DistributedDataParallel(model)
    sizes = [n // world_size] * world_size
    return _train_steps(ddp, steps, seed, n, sizes, rank, lr)


def ddp_reference(steps: int, seed: int, n: int, lr: float = 0.1) -> dict[str, Any]:
    """:func:`ddp_worker`'s training in one process, with :class:`BatchNorm` on the global batch."""
    model = _small_model(seed, lambda c: BatchNorm(c))
    return _train_steps(model, steps, seed, n, None, None, lr)


def suite_worker(rank: int, world_size: int, cases: Sequence[dict], errors: bool = False,
                 ddp: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Several checks in one launch: parity cases, then bad input, then DDP training.

    Returns ``{"parity": parity_worker(...), "errors": error_worker(...) or None,
    "ddp": ddp_worker(..., *ddp) or None}``. Starting processes costs seconds on a small
    machine, so the tests launch few groups and check several things in each.
    """
    return {
        "parity": parity_worker(rank, world_size, cases),
        "errors": error_worker(rank, world_size) if errors else None,
        "ddp": ddp_worker(rank, world_size, *ddp) if ddp is not None else None,
    }


def _fail_worker(rank: int, world_size: int, failing_rank: int) -> None:
    """Raise on ``failing_rank``; the other ranks wait in a collective (for the tests)."""
    if rank == failing_rank:
        raise RuntimeError(f"worker {rank} failed on purpose")
    dist.barrier()


def _sleep_worker(rank: int, world_size: int, seconds: float) -> None:
    """Sleep (for the tests of the time limit)."""
    time.sleep(seconds)


def _pid_worker(rank: int, world_size: int) -> int:
    return os.getpid()


# --------------------------------------------------------------------------------------
# Communication volume
# --------------------------------------------------------------------------------------


def resnet50_bn_channels() -> list[int]:
    """The channel count of every BN layer of ResNet-50, in order (He et al. 2016).

    A stem BN of 64 channels, then 16 bottleneck blocks in four stages of 3, 4, 6 and 3
    blocks with widths 64, 128, 256 and 512: each block has BNs of width, width and
    4 * width channels, and the first block of each stage one more BN of 4 * width on its
    projection shortcut.
    """
    channels = [64]
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for block in range(blocks):
            channels += [width, width, 4 * width]
            if block == 0:
                channels.append(4 * width)
    return channels


def resnet50_parameter_count() -> int:
    """The number of parameters of ResNet-50 (1000 classes), counted from its architecture.

    Convolutions without bias (7x7 stem; 1x1, 3x3, 1x1 in each bottleneck; 1x1 projection
    shortcuts), two parameters per BN channel, and the final 2048 -> 1000 linear layer.
    """
    total = 3 * 64 * 7 * 7 + 2 * 64
    cin = 64
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        for block in range(blocks):
            total += cin * width + width * width * 9 + width * 4 * width
            total += 2 * (width + width + 4 * width)
            if block == 0:
                total += cin * 4 * width + 2 * 4 * width
            cin = 4 * width
    return total + 2048 * 1000 + 1000


#: BN channel counts of ResNet-50, stem first.
RESNET50_BN_CHANNELS: tuple[int, ...] = tuple(resnet50_bn_channels())


def sync_values_per_step(channels: int) -> int:
    """Values one process contributes per training step to one SyncBN layer of C channels.

    Forward: the local mean and M2 of every channel (2C); backward: the local sums of dy and
    dy * x_hat of every channel (2C). The two integers of the agreement check (channels and
    count) are not counted.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer; got {channels!r}")
    return 4 * channels


def sync_bytes_per_step(channels: int | Sequence[int], itemsize: int = 4) -> int:
    """Bytes one process contributes per step to SyncBN layers of these channel counts."""
    if isinstance(channels, int):
        channels = [channels]
    return sum(sync_values_per_step(c) for c in channels) * itemsize


def ring_allreduce_bytes_received(values: int, processes: int, itemsize: int = 4) -> float:
    """Bytes one process receives in a ring all-reduce of ``values`` values over ``processes``.

    A ring all-reduce is a reduce-scatter then an all-gather, each of ``processes - 1``
    rounds in which every process receives one of ``processes`` equal chunks: in all
    ``2 (P - 1) / P`` times the data. (It sends as much as it receives.)
    """
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer; got {processes!r}")
    return 2 * (processes - 1) / processes * values * itemsize


def sync_bytes_received_per_step(channels: int | Sequence[int], processes: int,
                                 itemsize: int = 4) -> float:
    """Bytes one process receives per step from SyncBN layers of these channel counts.

    Forward: the ``all_gather`` delivers the mean and M2 (2C values) of each of the other
    ``processes - 1`` processes; backward: a ring all-reduce of the 2C sums. The small
    agreement check is not counted.
    """
    if isinstance(channels, int):
        channels = [channels]
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer; got {processes!r}")
    total = 0.0
    for c in channels:
        half = sync_values_per_step(c) // 2  # 2C values forward, 2C backward
        total += (processes - 1) * half * itemsize
        total += ring_allreduce_bytes_received(half, processes, itemsize)
    return total


# --------------------------------------------------------------------------------------
# Experiments of the chapter: small batches, accumulation, ghost batches
# --------------------------------------------------------------------------------------


def _mlp(norm: str, widths: Sequence[int], seed: int, virtual: int | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = 64
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if norm == "batch":
            layers.append(BatchNorm(width))
        elif norm == "group":
            layers.append(nn.GroupNorm(8, width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        elif norm != "none":
            raise ValueError(f"unknown normalization {norm!r}")
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, 10))
    return nn.Sequential(*layers)


def accumulation_gap(norm: str, micro: int = 8, n_micro: int = 4, seed: int = 0,
                     dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """One batch of ``micro * n_micro`` digits against ``n_micro`` accumulated micro-batches.

    The same network (``Linear -> norm -> ReLU -> Linear``) and examples; the accumulated
    loss is each micro-batch's mean loss divided by ``n_micro``, so that without BN the two
    gradients would be equal. Returns the relative difference of the gradients (2-norm over
    every parameter) and, for BN, the largest difference of the running means.
    """
    from .training import load_digits_data

    data = load_digits_data()
    x = data.x_train[: micro * n_micro].to(dtype)
    y = data.y_train[: micro * n_micro]
    grads, running = [], []
    for accumulate in (False, True):
        model = _mlp(norm, (32,), seed).to(dtype)
        model.train()
        if accumulate:
            for xb, yb in zip(x.split(micro), y.split(micro), strict=True):
                (nn.functional.cross_entropy(model(xb), yb) / n_micro).backward()
        else:
            nn.functional.cross_entropy(model(x), y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        bns = [m for m in model if isinstance(m, BatchNorm)]
        running.append(bns[0].running_mean.clone() if bns else torch.zeros(1))
    gap = float((grads[0] - grads[1]).norm() / grads[0].norm())
    return {"grad_rel_diff": gap, "running_mean_diff": float((running[0] - running[1]).abs().max())}


def batch_size_sweep(batch_sizes: Sequence[int], norms: Sequence[str] = ("batch", "group",
                     "layer"), seeds: Sequence[int] = (0, 1, 2), examples: int = 12_000,
                     lr: float = 1e-3, widths: Sequence[int] = (64,),
                     min_steps: int = 0) -> dict[str, np.ndarray]:
    """Test accuracy on the digits against batch size, per normalization and seed.

    Every run sees at least ``examples`` training examples (the default, 12,000, is about
    ten epochs of the 1,257 training digits) with Adam at a fixed learning rate, so a
    smaller batch takes more, smaller steps; and every run takes at least ``min_steps``
    optimizer steps, so that the largest batches are not left with a handful of steps
    (they then see more examples than ``examples``). Returns
    ``{norm: array (len(seeds), len(batch_sizes))}`` of test accuracies (eval mode: BN uses
    its running statistics).
    """
    from .training import accuracy, load_digits_data, minibatches, torch_threads

    data = load_digits_data()
    out = {}
    with torch_threads(1):
        for norm in norms:
            acc = np.zeros((len(seeds), len(batch_sizes)))
            for i, seed in enumerate(seeds):
                for j, m in enumerate(batch_sizes):
                    model = _mlp(norm, widths, seed)
                    opt = torch.optim.Adam(model.parameters(), lr=lr)
                    gen = torch.Generator().manual_seed(seed)
                    seen = steps = 0
                    while seen < examples or steps < min_steps:
                        for xb, yb in minibatches(data.x_train, data.y_train, m, gen):
                            loss = nn.functional.cross_entropy(model(xb), yb)
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                            seen += xb.shape[0]
                            steps += 1
                            if seen >= examples and steps >= min_steps:
                                break
                    acc[i, j] = accuracy(model, data.x_test, data.y_test)
            out[norm] = acc
    return out


def ghost_vs_sub_batches(n: int = 32, virtual: int = 8, c: int = 5,
                         seed: int = 0) -> dict[str, float]:
    """Ghost BN on a batch against :class:`bncourse.BatchNorm` on each sub-batch (float64).

    Returns the largest differences of the outputs and of the input and parameter gradients.
    """
    from .normalization import ghost_batch_norm

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3 + 1
    dy = torch.randn(n, c, generator=g, dtype=torch.float64)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=g, dtype=torch.float64)
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
    yg = ghost_batch_norm(xg, virtual, wg, bg)
    yg.backward(dy)
    ys, dxs, dws, dbs = [], [], [], []
    for xs, dys in zip(x.split(virtual), dy.split(virtual), strict=True):
        layer = BatchNorm(c, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        xs = xs.clone().requires_grad_(True)
        y = layer(xs)
        y.backward(dys)
        ys.append(y.detach())
        dxs.append(xs.grad)
        dws.append(layer.weight.grad)
        dbs.append(layer.bias.grad)
    return {
        "y": float((yg.detach() - torch.cat(ys)).abs().max()),
        "dx": float((xg.grad - torch.cat(dxs)).abs().max()),
        "dgamma": float((wg.grad - sum(dws)).abs().max()),
        "dbeta": float((bg.grad - sum(dbs)).abs().max()),
        "full_batch_y": float((yg.detach() - BatchNorm(c, dtype=torch.float64)(x).detach()
                               .mul(w).add(b)).abs().max()),
    }


# --------------------------------------------------------------------------------------
# The scaling benchmark
# --------------------------------------------------------------------------------------


def _bench_model(norm: str, widths: Sequence[int], own_group: Any = None) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    previous = 64
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if norm == "sync":
            layers.append(SyncBatchNorm(width))
        elif norm == "sync_self":
            layers.append(SyncBatchNorm(width, process_group=own_group))
        else:
            layers.append(BatchNorm(width))
        layers.append(nn.ReLU())
        previous = width
    layers.append(nn.Linear(previous, 10))
    return nn.parallel.DistributedDataParallel(nn.Sequential(*layers))


def _bench_worker(rank: int, world_size: int, global_batch: int, widths: Sequence[int],
                  steps: int, warmup: int) -> dict[str, list[float]]:
    local = global_batch // world_size
    # A one-rank group per process: every rank must create every group, in the same order.
    own_group = None
    for r in range(world_size):
        made = dist.new_group([r])
        if r == rank:
            own_group = made
    models = {norm: _bench_model(norm, widths, own_group) for norm in BENCH_VARIANTS}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(local, 64, generator=g)
    y = torch.randint(0, 10, (local,), generator=g)
    times: dict[str, list[float]] = {norm: [] for norm in BENCH_VARIANTS}
    for step in range(warmup + steps):
        # Rotate the variants step by step, so that a busy machine slows all of them alike.
        k = step % len(BENCH_VARIANTS)
        order = BENCH_VARIANTS[k:] + BENCH_VARIANTS[:k]
        for norm in order:
            dist.barrier()
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(models[norm](x), y)
            optimizers[norm].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[norm].step()
            dist.barrier()
            if step >= warmup:
                times[norm].append(time.perf_counter() - start)
    return times


#: The variants of the scaling benchmark: :class:`SyncBatchNorm` on all processes (the global
#: batch's statistics); the same layer on a one-rank group per process (identical code and
#: collectives, nothing exchanged between processes: each process's own statistics); and
#: :class:`bncourse.BatchNorm` (each process's own statistics, no collectives).
BENCH_VARIANTS = ("sync", "sync_self", "local")


def bench(processes: Sequence[int] = (1, 2, 3, 4), global_batch: int = 1536,
          widths: Sequence[int] = (256, 256), steps: int = 60, warmup: int = 5,
          timeout: float = 300.0) -> dict[str, Any]:
    """Time per training step of a data-parallel MLP against the number of processes.

    Strong scaling: the global batch is fixed and split evenly, each process runs one
    intra-op thread, and DDP averages the gradients. Three variants, rotated step by step
    within one launch (see :data:`BENCH_VARIANTS`): ``sync`` (:class:`SyncBatchNorm` on all
    processes), ``sync_self`` (:class:`SyncBatchNorm` on a one-rank group per process: the
    same code, with nothing exchanged, so ``sync - sync_self`` is the price of the exchange)
    and ``local`` (:class:`bncourse.BatchNorm`). A step's time is the slowest process's,
    between two barriers. Returns the machine, the settings and one row
    per (processes, variant) with the median and quartiles of the step time, and the
    machine's one-minute load average before and after the run (other programs competing
    for the cores show there).
    """
    from .bench import machine_info

    rows = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for p in processes:
        if global_batch % p:
            raise ValueError(f"the global batch {global_batch} does not split over {p} processes")
        results = launch(_bench_worker, p, (global_batch, tuple(widths), steps, warmup),
                         timeout=timeout)
        for norm in BENCH_VARIANTS:
            per_step = [max(ts) for ts in zip(*(r[norm] for r in results), strict=True)]
            q = statistics.quantiles(per_step, n=4)
            rows.append({"processes": p, "variant": norm,
                         "median_ms": 1e3 * statistics.median(per_step),
                         "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2]})
            print(f"{p} process(es), {norm:9s}: {rows[-1]['median_ms']:8.2f} ms per step "
                  f"(quartiles {rows[-1]['q1_ms']:.2f} to {rows[-1]['q3_ms']:.2f})",
                  file=sys.stderr)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": machine_info(), "global_batch": global_batch, "widths": list(widths),
            "steps": steps, "warmup": warmup, "dtype": "float32", "threads_per_process": 1,
            "command": "python -m bncourse.distributed bench",
            "load_average": [load_before, load_after], "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bncourse.distributed bench [--out PATH] [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bncourse.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time per step against the number of processes")
    b.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "book" / "data"
                                        / "distributed_bench.json"))
    b.add_argument("--quick", action="store_true", help="a smoke run: few steps, 1 process")
    args = parser.parse_args(argv)
    if args.quick:
        result = bench(processes=(1,), global_batch=64, widths=(32,), steps=3, warmup=1)
    else:
        result = bench()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
