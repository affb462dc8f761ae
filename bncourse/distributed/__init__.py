r"""Batch normalization across processes: synchronized BN from scratch on ``torch.distributed``.

A batch split across $P$ processes gives each process a local batch; batch normalization on
the global batch needs, per channel, statistics of the union. What must travel:

* **forward**: each process's count $n_k$, mean $\bar{x}_k$ and sum of squared deviations
  $M_{2,k} = \sum_i (x_i - \bar{x}_k)^2$, merged pairwise (Chan, Golub and LeVeque's update),
  not as a sum and a sum of squares about zero, whose difference cancels in float32;
* **backward**: the global sums $\sum dy$ and $\sum dy\,\hat{x}$ that the compact backward
  needs; the gradients of $\gamma$ and $\beta$ stay local and are summed (averaged) by data
  parallelism like every other parameter's.

The parts, one module each:

* :mod:`.moments`: the ``(count, mean, M2)`` triples and their merge (:func:`merge_moments`,
  :func:`merge_all`), and the one-round alternative of shifted sums;
* :mod:`.sync`: the layer, :class:`SyncBatchNorm` (a drop-in for :class:`bncourse.BatchNorm`
  on any process group, gloo on CPU included), and :func:`convert_sync_batchnorm`;
* :mod:`.launcher`: :func:`launch`, which runs a function in a group of fresh processes on
  one machine and returns what each returned;
* :mod:`.parity`: the checks the chapter and the tests run in several processes
  (:func:`suite_worker`, which runs the module's other workers) and their single-process
  references;
* :mod:`.traffic`: the bytes a process contributes and receives per step, and ResNet-50's;
* :mod:`.experiments`: the chapter's experiments on small batches, accumulation and ghost BN;
* :mod:`.benchmark`: ``python -m bncourse.distributed bench``, the time per step against the
  number of processes and its split into the price of synchronizing, the collectives' fixed
  overhead and the rest of the layer's code, written to ``book/data/distributed_bench.json``.
"""

from __future__ import annotations

from .benchmark import BENCH_VARIANTS, COMMAND, COST_SPLIT, bench, main, paired_costs
from .experiments import (
    accumulation_gap,
    batch_size_sweep,
    examples_seen,
    ghost_vs_sub_batches,
    small_batch_layer,
)
from .launcher import WorkerError, free_port, launch
from .moments import local_moments, merge_all, merge_moments, merge_shifted_sums, shifted_sums

# The workers that suite_worker runs (parity_worker, error_worker, ddp_worker) stay in
# .parity: the spawned processes import them from there, and no reader calls them.
from .parity import ddp_reference, single_process_reference, suite_worker
from .sync import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm
from .traffic import (
    RESNET50_BN_CHANNELS,
    ddp_buffer_bytes_per_step,
    resnet50_bn_channels,
    resnet50_parameter_count,
    ring_allreduce_bytes_received,
    sync_bytes_per_step,
    sync_bytes_received_per_step,
    sync_values_per_step,
)

__all__ = [
    "merge_moments",
    "local_moments",
    "merge_all",
    "shifted_sums",
    "merge_shifted_sums",
    "SyncBatchNormFunction",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "free_port",
    "launch",
    "WorkerError",
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
    "ddp_buffer_bytes_per_step",
    "small_batch_layer",
    "examples_seen",
    "accumulation_gap",
    "batch_size_sweep",
    "ghost_vs_sub_batches",
    "BENCH_VARIANTS",
    "COST_SPLIT",
    "COMMAND",
    "paired_costs",
    "bench",
    "main",
]
