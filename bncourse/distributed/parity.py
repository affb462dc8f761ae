"""Checks that run in several processes: SyncBatchNorm against BN on the global batch.

:func:`suite_worker` runs, in one launch (starting processes costs seconds on a small
machine), the parity cases of :func:`parity_worker`, the bad input of :func:`error_worker`
and the data-parallel training of :func:`ddp_worker`; :func:`single_process_reference` and
:func:`ddp_reference` compute what they must equal in one process. Chapter 6 and the tests
launch them with :func:`bncourse.distributed.launch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..layer import BatchNorm
from .sync import SyncBatchNorm

__all__ = ["parity_worker", "error_worker", "ddp_worker", "suite_worker",
           "single_process_reference", "ddp_reference"]


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
