"""Workers that only the tests run: fail on purpose, sleep, report a process id or CPU affinity.

They live here, not in ``bncourse.distributed``, because no reader needs them; the spawned
processes import them as ``tests.distributed_workers`` (pytest puts the repository root on
``sys.path``, and a spawned process inherits its parent's path).
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist


def fail_worker(rank: int, world_size: int, failing_rank: int) -> None:
    """Raise on ``failing_rank``; the other ranks wait in a collective."""
    if rank == failing_rank:
        raise RuntimeError(f"worker {rank} failed on purpose")
    dist.barrier()


def sleep_worker(rank: int, world_size: int, seconds: float) -> None:
    """Sleep (for the tests of the time limit)."""
    time.sleep(seconds)


def pid_worker(rank: int, world_size: int) -> int:
    """This process's id (for the tests that count processes)."""
    return os.getpid()


def affinity_worker(rank: int, world_size: int) -> int:
    """How many CPUs this process may run on (for the test of the benchmark's pinning)."""
    return len(os.sched_getaffinity(0))
