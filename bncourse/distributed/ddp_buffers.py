r"""Running statistics under ``DistributedDataParallel`` without SyncBN, when ranks' data differ.

Two gloo processes train the same MLP under DDP; rank 0 sees clean digits, rank 1 digits with
another contrast and brightness (:func:`bncourse.mixed_batches.shift_pixels`), each on its own
half of the training set. With plain BN every rank normalizes with its own batch, so in
training each domain is normalized with its own statistics, and each rank's running statistics
follow its own domain. What DDP does with those buffers:

* ``forward_sync_buffers=True`` (the default; the older name, ``broadcast_buffers``, is
  deprecated in torch 2.13): at the start of every forward, rank 0's buffers are broadcast and
  overwrite the other ranks' before the forward runs; each rank then updates them with its
  own batch. Rank 0's statistics are the run's statistics, and the other ranks' differ from
  them by the last step only. :func:`probe_worker` checks this on torch itself.
* ``forward_sync_buffers=False`` (``broadcast_buffers=False``): each rank keeps its own.

The buffers play no part in a training-mode forward, so the two settings train the same
weights; only what the other ranks hold afterwards differs.

Either way, the checkpoint (rank 0's ``state_dict``) and an evaluation on rank 0 use rank 0's
statistics: the clean domain's. :func:`training_worker` measures what that costs on the union
test set, against the options: SyncBN (:class:`bncourse.distributed.SyncBatchNorm`; torch's
``nn.SyncBatchNorm`` refuses CPU tensors), the buffers averaged over the ranks before
evaluation (an ``all_reduce``), precise BN (the running statistics re-estimated after training
on batches of the union's training data, as the global batch holds them), and each domain
evaluated with the statistics of the rank that saw it.

``python -m bncourse.distributed.ddp_buffers`` runs the measurement over
:data:`SEEDS` and writes :data:`DATA_FILE`; the chapter re-runs part of it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..freezing import batch_norm_layers, reestimate_running_stats
from ..mixed_batches import mixed_batch_experiment, shift_pixels
from ..training import DigitsData, load_digits_data, make_mlp, split_validation, torch_threads
from .launcher import launch
from .sync import SyncBatchNorm

__all__ = ["ARMS", "EVALUATIONS", "SEEDS", "DATA_FILE", "COMMAND", "CONFIG", "LR_GRID",
           "LR_SEEDS", "shards", "probe_worker", "training_worker", "chapter_worker", "run",
           "summarize", "select_lr", "load", "main"]

#: The three ways to train: DDP with the buffers broadcast from rank 0 at every forward, DDP
#: with every rank's buffers its own, and DDP with SyncBN (the global batch's statistics).
ARMS = ("broadcast", "local", "sync")

#: What each trained model is evaluated with: rank 0's buffers (the checkpoint), rank 1's,
#: their average over the ranks, precise BN on the union, and each domain with its rank's.
EVALUATIONS = ("rank0", "rank1", "averaged", "precise", "per_rank")

#: The seeds of the stored run.
SEEDS = tuple(range(10))

#: Training settings: the network, the local batch per rank and the schedule, the same as
#: :func:`bncourse.mixed_batches.mixed_batch_experiment`'s (a global batch of 16 + 16, half
#: clean and half shifted). The learning rate is chosen by :func:`main` from :data:`LR_GRID`
#: on a validation split and stored with the results.
CONFIG = {"widths": [64, 64], "batch_size": 16, "epochs": 10}

#: The learning rates :func:`main` tries, and the seeds of that choice.
LR_GRID = (0.003, 0.01, 0.03, 0.1)
LR_SEEDS = (100, 101, 102)

DATA_FILE = Path(__file__).resolve().parents[2] / "book" / "data" / "wild_ddp.json"
COMMAND = "python -m bncourse.distributed.ddp_buffers"


def shards(data: DigitsData) -> list[tuple[Tensor, Tensor]]:
    """Each rank's training data: rank 0 the even rows, clean; rank 1 the odd rows, shifted.

    Both shards have the same number of rows (an odd last row is left out), so both ranks
    take the same number of steps.
    """
    n = data.x_train.shape[0] // 2
    even, odd = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)
    return [(data.x_train[even], data.y_train[even]),
            (shift_pixels(data.x_train[odd]), data.y_train[odd])]


def _tiny_model(bn: type[nn.Module] = nn.BatchNorm1d) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2, bias=False), bn(2)).double()


def probe_worker(rank: int, world_size: int, steps: int = 3) -> dict[str, Any]:
    """What DDP and gloo actually do, recorded on each rank.

    * ``"buffers"[flag]``: for ``forward_sync_buffers=flag``, per step, the BN running mean
      before the forward and after it, and the batch mean of this rank's input to BN; rank
      ``r``'s inputs have their mean moved by ``5 r``, so every rank's statistics differ;
    * ``"torch_sync"``: the error torch's ``nn.SyncBatchNorm`` raises on a CPU tensor in
      training mode (``None`` if it ran);
    * ``"all_reduce"``: this rank's result of an ``all_reduce`` (sum) of a float64 vector
      whose entries differ by rank, with the vectors of all ranks, to check it against sums
      done in one process.
    """
    out: dict[str, Any] = {"buffers": {}}
    for flag in (True, False):
        model = _tiny_model()
        ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=flag)
        g = torch.Generator().manual_seed(100 + rank)
        record = []
        for _ in range(steps):
            x = torch.randn(8, 3, generator=g, dtype=torch.float64) + 5 * rank
            before = model[1].running_mean.clone()
            with torch.no_grad():
                batch_mean = model[0](x).mean(dim=0)
            ddp(x).sum().backward()
            record.append({"before": before, "after": model[1].running_mean.clone(),
                           "batch_mean": batch_mean})
        out["buffers"][flag] = record
    try:
        nn.SyncBatchNorm(2, dtype=torch.float64).train()(torch.randn(4, 2, dtype=torch.float64))
        out["torch_sync"] = None
    except (ValueError, RuntimeError) as e:
        out["torch_sync"] = f"{type(e).__name__}: {e}"
    g = torch.Generator().manual_seed(7 + rank)
    mine = torch.randn(1000, generator=g, dtype=torch.float64) * 10 ** (3 * rank)
    total = mine.clone()
    dist.all_reduce(total)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    out["all_reduce"] = {"result": total, "inputs": gathered}
    return out


def _set_buffers(model: nn.Module, buffers: Sequence[tuple[Tensor, Tensor]]) -> nn.Module:
    for layer, (mean, var) in zip(batch_norm_layers(model), buffers, strict=True):
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return model


def _buffers(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    return [(layer.running_mean.detach().clone(), layer.running_var.detach().clone())
            for layer in batch_norm_layers(model)]


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return 100 * float((model(x).argmax(dim=1) == y).double().mean())


def _union_batches(parts: Sequence[tuple[Tensor, Tensor]], batch_size: int,
                   generator: torch.Generator) -> list[Tensor]:
    """Global batches as DDP forms them: ``batch_size`` rows of every shard, shuffled per shard."""
    n = parts[0][0].shape[0]
    orders = [torch.randperm(n, generator=generator) for _ in parts]
    return [torch.cat([x[order[s:s + batch_size]]
                       for (x, _), order in zip(parts, orders, strict=True)])
            for s in range(0, n - batch_size + 1, batch_size)]


def _train(rank: int, arm: str, seed: int, part: tuple[Tensor, Tensor],
           config: dict[str, Any]) -> nn.Module:
    bn = (lambda c, dtype: SyncBatchNorm(c, dtype=dtype)) if arm == "sync" else nn.BatchNorm1d
    model = make_mlp(tuple(config["widths"]), bn=bn, seed=seed, bias_before_bn=False)
    ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=arm == "broadcast")
    opt = torch.optim.SGD(ddp.parameters(), lr=config["lr"], momentum=0.9)
    x, y = part
    b = config["batch_size"]
    g = torch.Generator().manual_seed(1000 * seed + rank)
    ddp.train()
    for _ in range(config["epochs"]):
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0] - b + 1, b):
            idx = order[s:s + b]
            loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _domain_distance(buffers: Sequence[tuple[Tensor, Tensor]],
                     population: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Where the first BN's running mean lies between the two domains' means: 0 at domain 0's,
    1 at domain 1's (the projection on the line between them)."""
    mean = buffers[0][0]
    a, b = population[0][0], population[1][0]
    return float(torch.dot(mean - a, b - a) / torch.dot(b - a, b - a))


def training_worker(rank: int, world_size: int, seeds: Sequence[int], config: dict[str, Any],
                    arms: Sequence[str] = ARMS) -> dict[str, Any]:
    """Train every arm of :data:`ARMS` on every seed; evaluate with every :data:`EVALUATIONS`.

    Returns, on every rank, ``{"accuracy": {arm: {evaluation: [[clean, shifted] per
    seed]}}, "position": {arm: [[rank 0's, rank 1's] per seed]}}``: test accuracies in percent
    on the clean and the shifted test set, and where each rank's first-layer running mean lies
    between the clean (0) and the shifted (1) population means of the trained network. Under
    SyncBN both ranks hold the same statistics, so its ``"rank0"``, ``"rank1"``,
    ``"averaged"`` and ``"per_rank"`` agree.
    """
    if world_size != 2:
        raise ValueError(f"the measurement needs exactly 2 processes; got {world_size}")
    missing = {"widths", "batch_size", "epochs", "lr"} - set(config)
    if missing:
        raise ValueError(f"config lacks {sorted(missing)}")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    data = load_digits_data()
    parts = shards(data)
    tests = [(data.x_test, data.y_test), (shift_pixels(data.x_test), data.y_test)]
    accuracy: dict[str, dict[str, list]] = {}
    position: dict[str, list] = {}
    for arm in arms:
        accuracy[arm] = {e: [] for e in EVALUATIONS}
        position[arm] = []
        for seed in seeds:
            model = _train(rank, arm, seed, parts[rank], config)
            own = _buffers(model)
            gathered = []
            for mean, var in own:
                means = [torch.empty_like(mean) for _ in range(world_size)]
                variances = [torch.empty_like(var) for _ in range(world_size)]
                dist.all_gather(means, mean)
                dist.all_gather(variances, var)
                gathered.append((means, variances))
            per_rank = [[(m[r], v[r]) for m, v in gathered] for r in range(world_size)]
            # A plain-BN copy: SyncBatchNorm's state_dict is BN's, and re-estimating plain BN
            # needs no collective.
            work = make_mlp(tuple(config["widths"]), seed=seed, bias_before_bn=False)
            work.load_state_dict(model.state_dict())
            scores = {}
            for name in ("rank0", "rank1"):
                _set_buffers(work, per_rank[int(name[-1])])
                scores[name] = [_accuracy(work, x, y) for x, y in tests]
            _set_buffers(work, [(sum(m) / world_size, sum(v) / world_size) for m, v in gathered])
            scores["averaged"] = [_accuracy(work, x, y) for x, y in tests]
            population = []
            for x, _ in parts:
                probe = reestimate_running_stats(copy.deepcopy(work), [x])
                population.append(_buffers(probe)[0])
            position[arm].append([_domain_distance(per_rank[r], population)
                                  for r in range(world_size)])
            g = torch.Generator().manual_seed(2000 + seed)
            reestimate_running_stats(work, _union_batches(parts, config["batch_size"], g))
            scores["precise"] = [_accuracy(work, x, y) for x, y in tests]
            scores["per_rank"] = [scores["rank0"][0], scores["rank1"][1]]
            for name, value in scores.items():
                accuracy[arm][name].append(value)
    return {"accuracy": accuracy, "position": position}


def chapter_worker(rank: int, world_size: int, seeds: Sequence[int], config: dict[str, Any],
                   arms: Sequence[str]) -> dict[str, Any]:
    """:func:`probe_worker` then :func:`training_worker`, in one launch (starting processes is
    the slow part on a small machine)."""
    return {"probe": probe_worker(rank, world_size),
            "training": training_worker(rank, world_size, seeds, config, arms)}


def run(seeds: Sequence[int], config: dict[str, Any], arms: Sequence[str] = ARMS,
        timeout: float = 900.0) -> dict[str, Any]:
    """:func:`training_worker` in two fresh processes; returns rank 0's result (both agree)."""
    results = launch(training_worker, 2, (tuple(seeds), config, tuple(arms)), timeout=timeout)
    if results[0] != results[1]:
        raise AssertionError("the two ranks returned different results")
    return results[0]


def summarize(result: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per arm and evaluation, the accuracy on the union test set (the mean of the two
    domains', which have the same size), one value per seed."""
    return {arm: {name: np.asarray(v, dtype=np.float64).mean(axis=1) for name, v in e.items()}
            for arm, e in result["accuracy"].items()}


def select_lr(grid: Sequence[float] = LR_GRID, seeds: Sequence[int] = LR_SEEDS
              ) -> dict[str, Any]:
    """The learning rate of both sections, chosen on a validation split of the training set.

    :func:`bncourse.mixed_batches.mixed_batch_experiment` on the split, for each rate of
    ``grid``; the score of a rate is its validation accuracy averaged over both arms, both
    domains and ``seeds``. Returns the grid, the scores and the rate with the best score.
    """
    data = split_validation(load_digits_data())
    scores = []
    for lr in grid:
        r = mixed_batch_experiment(data, seeds, widths=tuple(CONFIG["widths"]),
                                   epochs=CONFIG["epochs"], batch_size=CONFIG["batch_size"],
                                   lr=lr)
        scores.append(float((r.shared.mean() + r.per_domain.mean()) / 2))
    return {"grid": list(grid), "seeds": list(seeds), "validation_accuracy": scores,
            "chosen": float(grid[int(np.argmax(scores))])}


def load(path: Path = DATA_FILE) -> dict[str, Any]:
    """The stored measurement (see :func:`main`)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv: Sequence[str] | None = None) -> None:
    """Write :data:`DATA_FILE`: the learning rate's choice, section 3's mixed-batch experiment
    and the DDP measurement over :data:`SEEDS`, with their provenance."""
    from ..bench import machine_info

    parser = argparse.ArgumentParser(prog=COMMAND, description=main.__doc__)
    parser.add_argument("--out", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with torch_threads(1):
        selection = select_lr()
        config = {**CONFIG, "lr": selection["chosen"]}
        mixed = mixed_batch_experiment(load_digits_data(), SEEDS, widths=tuple(config["widths"]),
                                       epochs=config["epochs"],
                                       batch_size=config["batch_size"], lr=config["lr"])
    result = run(SEEDS, config)
    payload = {
        "provenance": {
            "command": COMMAND,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seeds": list(SEEDS),
            "machine": machine_info(),
            "threads_per_process": 1,
            "seconds": round(time.perf_counter() - start, 1),
        },
        "config": config,
        "lr_selection": selection,
        "mixed": {"shared": mixed.shared.tolist(), "per_domain": mixed.per_domain.tolist()},
        "accuracy": result["accuracy"],
        "position": result["position"],
    }
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {payload['provenance']['seconds']} s; chosen lr {config['lr']:g}")


if __name__ == "__main__":
    main()
