"""The scaling benchmark: time per training step against the number of processes.

``python -m bncourse.distributed bench`` (``make bench`` runs it) trains a data-parallel MLP
with a fixed global batch split over 1 to 4 processes and writes
``book/data/distributed_bench.json``: the machine, its load, the command and its settings,
every step's time for each variant, and per number of processes the paired per-step
differences that split SyncBatchNorm's extra time into the price of synchronizing, the
fixed overhead of its collectives and the rest of its code (medians with distribution-free
intervals: step times have heavy tails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..layer import BatchNorm
from . import sync
from .launcher import launch
from .sync import SyncBatchNorm

__all__ = ["BENCH_VARIANTS", "COST_SPLIT", "COMMAND", "paired_costs", "bench", "main"]

#: The variants of the scaling benchmark, all under ``DistributedDataParallel`` (whose
#: gradient all-reduce and buffer broadcast they share):
#:
#: * ``sync``: :class:`SyncBatchNorm` on all processes (the global batch's statistics);
#: * ``sync_self``: the same layer on a one-rank group per process (identical code and
#:   collectives, nothing exchanged between processes: each process's own statistics);
#: * ``no_collectives``: ``sync_self`` with the layer's three collectives replaced by local
#:   copies (in a group of one they return this process's own values, so the result is the
#:   same);
#: * ``local``: :class:`bncourse.BatchNorm` (each process's own statistics, no BN collectives).
BENCH_VARIANTS = ("sync", "sync_self", "no_collectives", "local")

#: The paired differences of :func:`paired_costs`: name, minuend and subtrahend variant.
COST_SPLIT = (
    ("exchange", "sync", "sync_self"),          # the price of synchronizing
    ("code", "sync_self", "local"),             # the layer's code, collectives included
    ("collectives", "sync_self", "no_collectives"),  # the collectives' fixed overhead
    ("arithmetic", "no_collectives", "local"),  # the rest of the layer's code
    ("extra", "sync", "local"),                 # all of SyncBatchNorm's extra time
)

#: The command that regenerates ``book/data/distributed_bench.json`` with the default settings.
COMMAND = "python -m bncourse.distributed bench"


@contextlib.contextmanager
def _local_copies() -> Iterator[None]:
    """SyncBatchNorm's collectives replaced by local copies, for the ``no_collectives`` variant.

    In a one-rank group an ``all_gather`` returns a copy of this process's tensor and an
    ``all_reduce`` leaves it as it is; so the layer computes the same values, and what it
    saves in time is the collectives' fixed overhead.
    """
    saved = sync._all_gather, sync._all_reduce_sum
    sync._all_gather = lambda tensor, group: [tensor.clone()]
    sync._all_reduce_sum = lambda tensor, group: None
    try:
        yield
    finally:
        sync._all_gather, sync._all_reduce_sum = saved


def _bench_model(norm: str, widths: Sequence[int], own_group: Any = None) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    previous = 64
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if norm == "sync":
            layers.append(SyncBatchNorm(width))
        elif norm in ("sync_self", "no_collectives"):
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
            context = _local_copies() if norm == "no_collectives" else contextlib.nullcontext()
            dist.barrier()
            start = time.perf_counter()
            with context:
                loss = nn.functional.cross_entropy(models[norm](x), y)
                optimizers[norm].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[norm].step()
            dist.barrier()
            if step >= warmup:
                times[norm].append(time.perf_counter() - start)
    return times


def paired_costs(step_ms: dict[str, Sequence[float]]) -> dict[str, Any]:
    """The paired per-step differences of one launch, as :class:`bncourse.claims.MedianDifference`.

    The variants run side by side in every step (rotated), so step ``i`` of each is measured
    under the same conditions and their differences are paired. Step times have heavy tails
    (a step that waits for a core can take several times the median) and neighbouring steps
    are correlated, so each difference is summarized by the median of its per-step values
    with the order-statistic interval of :func:`bncourse.claims.paired_median_difference`
    (which assumes independent steps). The keys are those of :data:`COST_SPLIT`:
    ``exchange`` = sync - sync_self (the price of synchronizing: waiting for the other
    processes and the data), ``code`` = sync_self - local (the layer's own code, its
    collectives included), split into ``collectives`` = sync_self - no_collectives (their
    fixed overhead) and ``arithmetic`` = no_collectives - local (the rest of the code), and
    ``extra`` = sync - local; and two differences of differences, taken step by step, whose
    intervals say which part costs more: ``exchange_minus_code`` and
    ``collectives_minus_arithmetic``. A median of differences is not additive: the medians
    of the parts need not add up to the median of the whole.
    """
    from ..claims import paired_median_difference

    steps = {v: [float(t) for t in step_ms[v]] for v in BENCH_VARIANTS}
    per_step = {name: [a - b for a, b in zip(steps[hi], steps[lo], strict=True)]
                for name, hi, lo in COST_SPLIT}
    costs = {name: paired_median_difference(steps[hi], steps[lo], what=f"{hi} - {lo}")
             for name, hi, lo in COST_SPLIT}
    costs["exchange_minus_code"] = paired_median_difference(
        per_step["exchange"], per_step["code"], what="exchange - code")
    costs["collectives_minus_arithmetic"] = paired_median_difference(
        per_step["collectives"], per_step["arithmetic"], what="collectives - arithmetic")
    return costs


def _estimate_record(e: Any) -> dict[str, float]:
    return {"median_ms": round(e.median, 4), "low_ms": round(e.low, 4),
            "high_ms": round(e.high, 4), "n": e.n, "confidence": e.confidence}


@contextlib.contextmanager
def _on_cores(cores: int) -> Iterator[int]:
    """Run what is started inside on ``cores`` of the CPUs this process may use (Linux).

    The spawned processes inherit the affinity, so the benchmark measures the same thing on
    any machine: up to ``cores`` processes can each have a core, more must take turns. Yields
    the number of cores actually used (all of them where affinity cannot be set, or where
    fewer are available).
    """
    if not hasattr(os, "sched_setaffinity"):
        yield os.cpu_count() or 1
        return
    allowed = sorted(os.sched_getaffinity(0))
    chosen = set(allowed[:cores])
    os.sched_setaffinity(0, chosen)
    try:
        yield len(chosen)
    finally:
        os.sched_setaffinity(0, allowed)


def bench(processes: Sequence[int] = (1, 2, 3, 4), global_batch: int = 1536,
          widths: Sequence[int] = (256, 256), steps: int = 200, warmup: int = 10,
          timeout: float = 900.0, command: str = COMMAND, cores: int = 2) -> dict[str, Any]:
    """Time per training step of a data-parallel MLP against the number of processes.

    Strong scaling: the global batch is fixed and split evenly, each process runs one
    intra-op thread, and DDP averages the gradients. All processes run on ``cores`` CPUs
    (two by default, pinned where the system allows), so that one to four processes go
    from a core each to two per core on any machine. The :data:`BENCH_VARIANTS` are rotated
    step by step within one launch per number of processes, so that a busy machine slows
    all of them alike; a step's time is the slowest process's, between two barriers.
    Returns the machine, the cores used (``cores``), the settings (``steps`` is the number
    of repeats), the command, the machine's one-minute load average before and after the run
    (other programs competing for the cores show in the first), one row per (processes,
    variant) with every step's time (``step_ms``), its median and quartiles, and per number
    of processes the paired differences of :func:`paired_costs` (median, 95% order-statistic
    interval, count).
    """
    from ..bench import machine_info

    rows, paired = [], []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with _on_cores(cores) as used:
        for p in processes:
            if global_batch % p:
                raise ValueError(f"the global batch {global_batch} does not split over {p} "
                                 f"processes")
            results = launch(_bench_worker, p, (global_batch, tuple(widths), steps, warmup),
                             timeout=timeout)
            step_ms = {}
            for norm in BENCH_VARIANTS:
                per_step = [1e3 * max(ts) for ts in zip(*(r[norm] for r in results), strict=True)]
                step_ms[norm] = per_step
                q = statistics.quantiles(per_step, n=4)
                rows.append({"processes": p, "variant": norm,
                             "median_ms": statistics.median(per_step), "q1_ms": q[0],
                             "q3_ms": q[2], "step_ms": [round(t, 4) for t in per_step]})
                print(f"{p} process(es), {norm:14s}: {rows[-1]['median_ms']:8.2f} ms per step "
                      f"(quartiles {rows[-1]['q1_ms']:.2f} to {rows[-1]['q3_ms']:.2f})",
                      file=sys.stderr)
            costs = paired_costs(step_ms)
            paired.append({"processes": p, **{k: _estimate_record(e) for k, e in costs.items()}})
            print(f"{p} process(es): exchange {costs['exchange'].format('.3g')} ms, "
                  f"code {costs['code'].format('.3g')} ms (collectives "
                  f"{costs['collectives'].format('.3g')}, arithmetic "
                  f"{costs['arithmetic'].format('.3g')})", file=sys.stderr)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": machine_info(), "cores": used, "command": command,
            "global_batch": global_batch,
            "widths": list(widths), "steps": steps, "repeats": steps, "warmup": warmup,
            "dtype": "float32", "threads_per_process": 1,
            "load_average": [load_before, load_after], "rows": rows, "paired": paired}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bncourse.distributed bench [--out PATH] [--steps N] [--cores N] [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bncourse.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time per step against the number of processes")
    b.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "book" / "data"
                                        / "distributed_bench.json"))
    b.add_argument("--steps", type=int, default=None,
                   help="timed steps (repeats) per number of processes; default 200")
    b.add_argument("--cores", type=int, default=None,
                   help="CPUs the processes are pinned to (Linux); default 2")
    b.add_argument("--quick", action="store_true", help="a smoke run: few steps, 1 process")
    args = parser.parse_args(argv)
    command = COMMAND + (f" --steps {args.steps}" if args.steps is not None else "")
    command += f" --cores {args.cores}" if args.cores is not None else ""
    cores = {} if args.cores is None else {"cores": args.cores}
    if args.quick:
        result = bench(processes=(1,), global_batch=64, widths=(32,),
                       steps=args.steps or 6, warmup=1, command=command + " --quick", **cores)
    else:
        kwargs = {} if args.steps is None else {"steps": args.steps}
        result = bench(command=command, **kwargs, **cores)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
