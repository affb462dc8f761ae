"""Start a group of processes on one machine, run a function in each, collect the results.

:func:`launch` starts ``world_size`` processes with ``torch.multiprocessing`` (spawn), joins
them into a gloo group on 127.0.0.1 at a free port chosen at run time, runs a module-level
function in each and returns what each returned. Every launch is bounded in time; a worker
that raises makes :func:`launch` raise :class:`WorkerError` with the worker's traceback, and
no process outlives the call.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "launch", "WorkerError"]


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
