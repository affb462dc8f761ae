"""Synchronized BN across processes: parity with single-process BN on the global batch,
DDP training, the pairwise merge of moments, the launcher's limits, and bad input.

Process groups are expensive to start on a small machine, so each world size (2, 3, 4) is
launched once, by a module-scoped fixture, and several tests read its results.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import bncourse
from bncourse import distributed as D
from bncourse.distributed import launcher

from . import distributed_workers as W

TOL = 1e-12

# Local batch sizes per rank: unequal, with a process holding one example, and one holding
# none (allowed while the global batch has at least 2 values per channel).
CASES = {
    2: [
        {"sizes": [1, 5], "shape": (3,), "seed": 11, "steps": 3, "momentum": 0.1},
        {"sizes": [3, 1], "shape": (2, 3, 4), "seed": 12, "steps": 2, "momentum": None},
    ],
    3: [
        {"sizes": [4, 1, 2], "shape": (4,), "seed": 21, "steps": 3, "momentum": 0.1},
        {"sizes": [0, 2, 1], "shape": (3, 2, 2), "seed": 22, "steps": 2, "momentum": 0.3},
    ],
    4: [
        {"sizes": [2, 1, 3, 1], "shape": (3,), "seed": 31, "steps": 3, "momentum": 0.1},
        {"sizes": [1, 2, 1, 2], "shape": (2, 3, 3), "seed": 32, "steps": 2, "momentum": 0.1},
    ],
}
# Process groups inside the world of 4: each group normalizes over its own ranks only.
GROUP_CASE = {"sizes": [2, 1, 3, 1], "shape": (3, 2), "seed": 41, "steps": 2, "momentum": 0.1,
              "groups": [[0, 2], [1, 3]]}
DDP = (4, 5, 8)  # steps, seed, global batch


@pytest.fixture(scope="module")
def runs():
    """One launch per world size: parity cases everywhere, errors at 2 and 3, DDP at 2, and
    process groups at 4."""
    out = {}
    for world, cases in CASES.items():
        if world == 4:
            cases = [*cases, GROUP_CASE]
        out[world] = D.launch(
            D.suite_worker, world,
            (cases, world in (2, 3), DDP if world == 2 else None), timeout=90,
        )
    return out


def _gap(a, b):
    return float((a - b).detach().abs().max())


@pytest.mark.verifies("thm-distributed-sync", "eq-distributed-backward")
@pytest.mark.parametrize("world", sorted(CASES))
def test_sync_bn_equals_single_process_bn_on_the_concatenated_batch(runs, world):
    results = runs[world]
    for i, case in enumerate(CASES[world]):
        ref = D.single_process_reference(case)
        for step in range(case["steps"]):
            for key in ("y", "dx"):
                got = torch.cat([r["parity"][i][key][step] for r in results])
                gap = _gap(got, ref[key][step])
                assert gap <= TOL, (
                    f"{key} differs by {gap:.3g} ({world} ranks, {case}, step {step})")
            for key in ("dgamma", "dbeta"):
                got = sum(r["parity"][i][key][step] for r in results)
                gap = _gap(got, ref[key][step])
                assert gap <= TOL, (
                    f"{key} summed over ranks differs by {gap:.3g} ({world} ranks, {case})")
        for r in results:
            for key in ("running_mean", "running_var"):
                gap = _gap(r["parity"][i][key], ref[key])
                assert gap <= TOL, f"{key} differs by {gap:.3g} ({world} ranks, {case})"
        got = torch.cat([r["parity"][i]["eval"] for r in results])
        assert _gap(got, ref["eval"]) <= TOL


def test_sync_bn_on_a_process_group_normalizes_over_that_group_only(runs):
    index = len(CASES[4])
    results = runs[4]
    for ranks in GROUP_CASE["groups"]:
        ref = D.single_process_reference(GROUP_CASE, ranks)
        for step in range(GROUP_CASE["steps"]):
            for key in ("y", "dx"):
                got = torch.cat([results[r]["parity"][index][key][step] for r in ranks])
                gap = _gap(got, ref[key][step])
                assert gap <= TOL, f"{key} of group {ranks} differs by {gap:.3g}"
            got = sum(results[r]["parity"][index]["dgamma"][step] for r in ranks)
            assert _gap(got, ref["dgamma"][step]) <= TOL
        for r in ranks:
            assert _gap(results[r]["parity"][index]["running_var"], ref["running_var"]) <= TOL
    # The two groups saw different data, so their statistics differ.
    assert _gap(results[0]["parity"][index]["running_mean"],
                results[1]["parity"][index]["running_mean"]) > 1e-3


def test_local_gradients_of_gamma_and_beta_differ_between_ranks(runs):
    # The parameter gradients are local sums: only their sum over ranks is the global one.
    a, b = (r["parity"][0]["dbeta"][0] for r in runs[2])
    assert _gap(a, b) > 1e-3


def test_bad_input_is_a_clear_error_on_every_rank(runs):
    for world in (2, 3):
        for rank, r in enumerate(runs[world]):
            errors = r["errors"]
            assert "disagree on the number of channels" in errors["channels"]
            assert "rank 0: 3" in errors["channels"] and f"rank {world - 1}: {2 + world}" in (
                errors["channels"])
            assert "0 value(s) per channel" in errors["empty"], rank
            assert "1 value(s) per channel" in errors["one_value"], rank
            assert errors["group_alive"] == str(world), "the group broke after an error"


def test_ddp_on_gloo_matches_single_process_training_on_the_global_batch(runs):
    steps, seed, n = DDP
    ref = D.ddp_reference(steps, seed, n)
    for r in runs[2]:
        state = r["ddp"]["state"]
        assert state.keys() == ref["state"].keys()
        for key, value in ref["state"].items():
            gap = _gap(state[key].double(), value.double())
            assert gap <= 1e-10, f"{key} differs by {gap:.3g} after {steps} DDP steps"
    # The global mean loss is the mean of the two equal local mean losses.
    local = np.array([r["ddp"]["losses"] for r in runs[2]])
    np.testing.assert_allclose(local.mean(axis=0), ref["losses"], rtol=1e-10)


def test_uninitialized_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    layer = D.SyncBatchNorm(3)
    with pytest.raises(ValueError, match="initialized process group"):
        layer(torch.randn(4, 3))
    layer.eval()  # eval mode communicates nothing and works anywhere
    assert layer(torch.randn(4, 3)).shape == (4, 3)


def test_eval_mode_without_running_statistics_uses_local_batch_statistics_without_a_group():
    # Like torch.nn.SyncBatchNorm: no running statistics, eval mode -> this process's batch.
    assert not dist.is_initialized()
    torch.manual_seed(3)
    x = torch.randn(6, 3, 2, dtype=torch.float64) * 2 + 1
    sync = D.SyncBatchNorm(3, track_running_stats=False, dtype=torch.float64).eval()
    torch_bn = nn.BatchNorm1d(3, track_running_stats=False, dtype=torch.float64).eval()
    with torch.no_grad():
        for layer in (sync, torch_bn):
            layer.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    assert _gap(sync(x), torch_bn(x)) <= TOL
    sync.train()  # training mode still needs the group
    with pytest.raises(ValueError, match="training mode needs an initialized process group"):
        sync(x)


def test_a_process_outside_the_layers_group_is_a_clear_error():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{D.free_port()}",
                            rank=0, world_size=1)
    try:
        outside = dist.GroupMember.NON_GROUP_MEMBER  # what new_group gives a non-member
        layer = D.SyncBatchNorm(3, process_group=outside)
        with pytest.raises(ValueError, match="not a member of the layer's process_group"):
            layer(torch.randn(4, 3))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{D.free_port()}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_values_communicated_per_step_are_those_counted(world_of_one, monkeypatch):
    sent = []
    for name in ("all_gather", "all_reduce"):
        original = getattr(dist, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            tensor = args[1] if _name == "all_gather" else args[0]
            sent.append((_name, tensor.dtype, tensor.numel()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(dist, name, counting)
    c = 7
    layer = D.SyncBatchNorm(c)
    x = torch.randn(5, c, 2, requires_grad=True)
    layer(x).sum().backward()
    floats = sum(n for _, dtype, n in sent if dtype.is_floating_point)
    ints = sum(n for _, dtype, n in sent if not dtype.is_floating_point)
    assert floats == D.sync_values_per_step(c) == 4 * c
    assert ints == 2  # the agreement check: channels and local count
    assert D.sync_bytes_per_step(c) == 4 * c * 4
    assert D.sync_bytes_per_step([c, c], itemsize=8) == 2 * 4 * c * 8


def test_bytes_received_grow_with_the_number_of_processes():
    c = 7
    # One process receives nothing; with two, the all_gather delivers exactly the peer's
    # contribution (2C values) and a ring all-reduce of 2C values delivers 2C values.
    assert D.sync_bytes_received_per_step(c, 1) == 0
    assert D.sync_bytes_received_per_step(c, 2) == D.sync_bytes_per_step(c)
    assert D.ring_allreduce_bytes_received(100, 2, itemsize=1) == 100
    # The all-reduce's share tends to twice the data; the all_gather's grows like P - 1.
    for p in (3, 8, 64):
        gather = (p - 1) * 2 * c * 4
        assert D.sync_bytes_received_per_step([c, c], p) == pytest.approx(
            2 * (gather + D.ring_allreduce_bytes_received(2 * c, p)))
        assert D.ring_allreduce_bytes_received(10, p, itemsize=1) < 20
    with pytest.raises(ValueError, match="processes"):
        D.sync_bytes_received_per_step(c, 0)


def test_torch_sync_batchnorm_refuses_cpu_training_which_the_chapter_says(world_of_one):
    # If this starts to pass, the chapter's opening paragraph must change.
    with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
        nn.SyncBatchNorm(3)(torch.randn(4, 3))
    assert D.SyncBatchNorm(3)(torch.randn(4, 3)).shape == (4, 3)


def test_sync_bn_in_a_world_of_one_is_batch_norm(world_of_one):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    sync = D.SyncBatchNorm(3, dtype=torch.float64)
    plain = bncourse.BatchNorm(3, dtype=torch.float64)
    assert sync.state_dict().keys() == plain.state_dict().keys()
    assert _gap(sync(x), plain(x)) <= TOL
    assert _gap(sync.running_var, plain.running_var) <= TOL


def test_sync_bn_backward_passes_gradcheck_and_options_match_batch_norm(world_of_one):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return D.SyncBatchNormFunction.apply(x, w, b, 1e-5, None)[0]

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-8)
    for options in ({"affine": False}, {"track_running_stats": False},
                    {"affine": False, "momentum": None}):
        sync = D.SyncBatchNorm(3, dtype=torch.float64, **options)
        plain = bncourse.BatchNorm(3, dtype=torch.float64, **options)
        for module in (sync, plain):
            module.train()
        xs = x.detach().clone().requires_grad_(True)
        xp = x.detach().clone().requires_grad_(True)
        ys, yp = sync(xs), plain(xp)
        ys.backward(torch.ones_like(ys) + xs.detach())
        yp.backward(torch.ones_like(yp) + xp.detach())
        assert _gap(ys, yp) <= TOL and _gap(xs.grad, xp.grad) <= TOL, options
        sync.eval()
        plain.eval()
        assert _gap(sync(x), plain(x)) <= TOL, options


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_reduced_precision_inputs_use_float32_statistics_like_batch_norm(world_of_one, dtype,
                                                                       param_dtype):
    torch.manual_seed(2)
    x = (torch.randn(16, 3, 4) * 3 + 100).to(dtype)
    pd = dtype if param_dtype == "same" else torch.float32
    sync, plain = D.SyncBatchNorm(3, dtype=pd), bncourse.BatchNorm(3, dtype=pd)
    xs, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ys, yp = sync(xs), plain(xp)
    assert ys.dtype == yp.dtype == dtype
    dy = torch.randn(x.shape).to(dtype)
    ys.backward(dy)
    yp.backward(dy)
    assert xs.grad.dtype == dtype and sync.weight.grad.dtype == pd
    # Both compute in float32 and round once: they agree to a unit in the last place.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in ((ys, yp), (xs.grad, xp.grad), (sync.running_var, plain.running_var)):
        assert _gap(a.float(), b.float()) <= tol * max(1.0, float(b.detach().float().abs().max()))
    # The statistics are not computed in half: the offset of 100 would leave no digit.
    assert abs(float(sync.running_mean.float().mean()) - 10.0) < 0.5


def test_a_second_derivative_is_refused_rather_than_wrong(world_of_one):
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = D.SyncBatchNorm(3, dtype=torch.float64)(x)
    (g,) = torch.autograd.grad((y**3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()


def test_a_dtype_mismatch_between_input_and_layer_is_a_clear_error(world_of_one):
    with pytest.raises(TypeError, match="dtype"):
        D.SyncBatchNorm(3)(torch.randn(4, 3, dtype=torch.float64))


def test_convert_sync_batchnorm_replaces_every_bn_and_keeps_its_state():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(bncourse.BatchNorm(4)))
    model[1].running_mean.fill_(2.0)
    model.eval()
    converted = D.convert_sync_batchnorm(model)
    assert isinstance(converted[1], D.SyncBatchNorm)
    assert isinstance(converted[2][0], D.SyncBatchNorm)
    assert torch.equal(converted[1].running_mean, torch.full((4,), 2.0))
    assert not converted[1].training


def test_convert_sync_batchnorm_keeps_float64_values_and_the_parameter_objects():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), bncourse.BatchNorm(4)).double()
    with torch.no_grad():
        for bn in (model[1], model[2]):
            bn.weight.copy_(torch.rand(4, dtype=torch.float64) + 0.1 / 3)
            bn.running_var.copy_(torch.rand(4, dtype=torch.float64) + 1 / 3)
    model[2].weight.requires_grad_(False)  # a frozen BN
    model[2].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    converted = D.convert_sync_batchnorm(model)
    for k, v in converted.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k  # no float32 rounding
    assert converted[1].weight is params[2] and converted[2].bias is params[5]
    assert not converted[2].weight.requires_grad and not converted[2].bias.requires_grad
    assert converted[1].weight.requires_grad
    # The optimizer built before the conversion still holds the converted model's parameters.
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in converted.parameters()} <= held


# --------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------


def test_a_failing_worker_fails_the_launch_with_its_traceback_and_leaves_no_process():
    with pytest.raises(D.WorkerError) as info:
        D.launch(W.fail_worker, 2, (1,), timeout=60)
    message = str(info.value)
    assert "RuntimeError: worker 1 failed on purpose" in message
    # Rank 1 fails first by construction (rank 0 fails only because its peer left), and the
    # earliest failure is labelled whether or not rank 0 had time to record its own.
    assert "Traceback" in message and "--- rank 1 (failed first) ---" in message
    assert "--- rank 0 (failed first) ---" not in message
    assert multiprocessing.active_children() == []


def test_workers_started_before_a_failed_start_are_stopped(monkeypatch):
    def start_one_then_fail(*args, **kwargs):
        multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,)).start()
        raise OSError("could not start the second worker")

    monkeypatch.setattr(launcher.mp, "start_processes", start_one_then_fail)
    with pytest.raises(OSError, match="second worker"):
        D.launch(W.pid_worker, 2, timeout=30)
    assert multiprocessing.active_children() == []


def test_a_launch_that_runs_too_long_is_stopped():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        D.launch(W.sleep_worker, 2, (120.0,), timeout=3)
    assert time.monotonic() - start < 30
    assert multiprocessing.active_children() == []


def test_a_port_taken_before_the_rendezvous_is_retried_with_a_new_one(monkeypatch):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        real, calls = launcher.free_port, []

        def first_busy():
            calls.append(1)
            return busy if len(calls) == 1 else real()

        monkeypatch.setattr(launcher, "free_port", first_busy)
        pids = D.launch(W.pid_worker, 1, timeout=60)
    assert len(calls) == 2 and len(pids) == 1
    assert multiprocessing.active_children() == []


def test_launch_rejects_a_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        D.launch(W.pid_worker, 0)


# --------------------------------------------------------------------------------------
# The pairwise merge
# --------------------------------------------------------------------------------------

_parts = st.lists(
    st.tuples(st.integers(0, 6), st.floats(-1e4, 1e4), st.floats(0.01, 100.0)),
    min_size=1, max_size=5,
).filter(lambda parts: sum(n for n, _, _ in parts) > 0)


@pytest.mark.verifies("eq-distributed-merge")
@given(parts=_parts, seed=st.integers(0, 2**16))
def test_merge_moments_equals_numpy_on_the_concatenation(parts, seed):
    rng = np.random.default_rng(seed)
    chunks = [rng.normal(loc, scale, (n, 3)) for n, loc, scale in parts]
    triples = []
    for chunk in chunks:
        n = chunk.shape[0]
        mean = chunk.mean(axis=0) if n else np.zeros(3)
        triples.append((n, mean, ((chunk - mean) ** 2).sum(axis=0) if n else np.zeros(3)))
    n, mean, m2 = D.merge_all(triples)
    whole = np.concatenate(chunks)
    assert n == whole.shape[0]
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(m2 / n, whole.var(axis=0), rtol=1e-9, atol=1e-9)


@given(a=st.integers(1, 20), b=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_merge_moments_is_symmetric_and_works_on_tensors(a, b, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(a + b, 4, generator=g, dtype=torch.float64) + 50
    ta, tb = D.local_moments(x[:a]), D.local_moments(x[a:])
    n1, mean1, m21 = D.merge_moments(ta, tb)
    n2, mean2, m22 = D.merge_moments(tb, ta)
    n, mean, m2 = D.local_moments(x)
    assert n1 == n2 == n
    for got in (mean1, mean2):
        assert _gap(got, mean) <= 1e-12
    for got in (m21, m22):
        assert _gap(got, m2) <= 1e-10 * float(m2.abs().max())


def test_merge_moments_rejects_bad_counts():
    z = np.zeros(2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="count"):
            D.merge_moments((bad, z, z), (2, z, z))
    with pytest.raises(ValueError, match="triples"):
        D.merge_moments((1, z), (2, z, z))
    with pytest.raises(ValueError, match="at least one"):
        D.merge_all([])


@pytest.mark.verifies("eq-distributed-one-pass")
def test_the_one_pass_variance_loses_every_digit_in_float32_where_the_merge_does_not():
    from bncourse.normalization import one_pass_variance

    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(4096, 1, generator=g, dtype=torch.float64) + 1e4
    x32 = x64.float()
    true = float(x64.var(unbiased=False))
    one_pass = float(one_pass_variance(x32)[0])
    assert abs(one_pass - true) > 0.5 * true, "the one-pass formula kept its digits"
    parts = [D.local_moments(chunk) for chunk in x32.split(1000)]
    n, _, m2 = D.merge_all(parts)
    assert abs(float(m2[0]) / n - true) < 1e-3 * true


# --------------------------------------------------------------------------------------
# Communication volume of ResNet-50, checked against an independent build of the network
# --------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                          nn.BatchNorm2d(4 * width))
            if stride != 1 or cin != 4 * width else nn.Identity()
        )


def _resnet50() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)]
    cin = 64
    for blocks, width, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for b in range(blocks):
            layers.append(_Bottleneck(cin, width, stride if b == 0 else 1))
            cin = 4 * width
    layers.append(nn.Linear(2048, 1000))
    return nn.Sequential(*layers)


def test_resnet50_bn_channels_match_a_built_resnet50():
    torch.manual_seed(0)
    model = _resnet50()
    # 25,557,032 parameters: the count torchvision documents for its resnet50.
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert D.resnet50_parameter_count() == 25_557_032
    built = sorted(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert sorted(D.resnet50_bn_channels()) == built
    assert len(D.RESNET50_BN_CHANNELS) == len(built)


# --------------------------------------------------------------------------------------
# The scaling benchmark: a smoke run of the command, and the stored table the chapter reads
# --------------------------------------------------------------------------------------


def test_bench_command_writes_the_table_the_chapter_reads(tmp_path):
    import json

    out = tmp_path / "bench.json"
    assert D.main(["bench", "--quick", "--out", str(out)]) == 0
    quick = json.loads(out.read_text())
    stored = json.loads((Path(__file__).resolve().parent.parent / "book" / "data"
                         / "distributed_bench.json").read_text())
    for table in (quick, stored):
        assert {"machine", "cores", "command", "global_batch", "widths", "steps", "repeats",
                "load_average", "rows", "paired"} <= table.keys()
        assert 1 <= table["cores"] <= table["machine"]["cores"]
        assert table["command"].startswith(D.COMMAND) and table["machine"]["date"]
        cells = {(r["processes"], r["variant"]) for r in table["rows"]}
        procs = {p for p, _ in cells}
        assert cells == {(p, v) for p in procs for v in D.BENCH_VARIANTS}
        for r in table["rows"]:
            assert 0 < r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
            assert len(r["step_ms"]) == table["repeats"] == table["steps"]
        # The stored paired summaries are those of the stored steps.
        steps = {(r["processes"], r["variant"]): r["step_ms"] for r in table["rows"]}
        assert {r["processes"] for r in table["paired"]} == procs
        for record in table["paired"]:
            costs = D.paired_costs({v: steps[(record["processes"], v)] for v in D.BENCH_VARIANTS})
            assert set(costs) <= record.keys()
            for key, estimate in costs.items():
                assert record[key]["n"] == table["repeats"]
                assert abs(record[key]["median_ms"] - estimate.median) < 1e-3, (record, key)
                assert record[key]["low_ms"] <= record[key]["median_ms"] <= record[key]["high_ms"]
    assert "--quick" in quick["command"]
    assert {1, 2, 3, 4} <= {r["processes"] for r in stored["rows"]}  # the chapter reads all four


def test_paired_costs_are_medians_of_the_per_step_differences():
    rng = np.random.default_rng(0)
    local = 10 + rng.exponential(1.0, 41)
    bare = local + 0.5 + rng.normal(0, 0.1, 41)
    own = bare + 0.3 + rng.normal(0, 0.1, 41)
    sync = own + 2.0 + rng.exponential(1.0, 41)
    sync[3] += 100.0  # one step that waited for a core: the median hardly moves
    steps = {"sync": sync, "sync_self": own, "no_collectives": bare, "local": local}
    costs = D.paired_costs(steps)
    for key, hi, lo in D.COST_SPLIT:
        assert costs[key].median == pytest.approx(np.median(steps[hi] - steps[lo]))
        assert costs[key].n == 41 and costs[key].low <= costs[key].median <= costs[key].high
    assert costs["exchange_minus_code"].median == pytest.approx(
        np.median((sync - own) - (own - local)))
    assert costs["collectives_minus_arithmetic"].median == pytest.approx(
        np.median((own - bare) - (bare - local)))
    assert costs["exchange"].excludes_zero and costs["exchange"].high < 5


# --------------------------------------------------------------------------------------
# The package's surface, and its command
# --------------------------------------------------------------------------------------


def test_every_public_name_exists_and_test_workers_are_not_public():
    for name in D.__all__:
        assert hasattr(D, name), name
    for name in ("_fail_worker", "_sleep_worker", "_pid_worker", "fail_worker", "sleep_worker",
                 "pid_worker"):
        assert not hasattr(D, name), f"{name} is a test helper, not part of bncourse.distributed"
    # The workers that suite_worker runs are internal: importable (the spawned processes need
    # them), but not part of the package's surface.
    from bncourse.distributed import parity

    for name in ("parity_worker", "error_worker", "ddp_worker"):
        assert name not in D.__all__ and not hasattr(D, name), name
        assert callable(getattr(parity, name))
    assert "suite_worker" in D.__all__


def test_python_m_bncourse_distributed_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bncourse.distributed", "bench", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--steps" in done.stdout


# --------------------------------------------------------------------------------------
# The chapter's experiments: a batch of two, the sweep's schedule, accumulation and ghost BN
# --------------------------------------------------------------------------------------


@pytest.mark.verifies("eq-distributed-two")
@pytest.mark.parametrize("eps", [0.0, 1e-5, 1e-2])
def test_a_batch_of_two_normalizes_to_plus_minus_one_and_passes_no_gradient_but_through_eps(eps):
    r = D.small_batch_layer(2, eps=eps, seed=3, width=16)
    z, x_hat, dy, dz = r["z"], r["x_hat"], r["dy"], r["dz"]
    d = (z[0] - z[1]) / 2
    assert _gap(x_hat[0], d / torch.sqrt(d**2 + eps)) <= 1e-12
    assert _gap(x_hat[1], -x_hat[0]) <= 1e-12
    want = eps * (dy[0] - dy[1]) / (2 * (d**2 + eps) ** 1.5)
    # Relative to the gradient itself, or to round-off of the gradient with constant statistics.
    tol = 1e-10 * float(dz.abs().max()) + 1e-13 * float(r["dz_const"].abs().max())
    assert _gap(dz[0], want) <= tol and _gap(dz[1], -want) <= tol
    if eps == 0.0:
        assert float(dz.norm()) <= 1e-12 * float(r["dz_const"].norm())


def test_from_three_values_on_the_gradient_passes():
    for m in (3, 4, 8):
        r = D.small_batch_layer(m)
        assert float(r["dz"].norm()) > 0.3 * float(r["dz_const"].norm()), m
        # Chapter 2's two sums: sum dz = 0, and sum dz * x_hat = S / sqrt(var + eps) times
        # eps / (var + eps), with S = sum dy * x_hat (gamma = 1).
        assert float(r["dz"].sum(dim=0).abs().max()) <= 1e-12
        var = r["z"].var(dim=0, unbiased=False)
        s = (r["dy"] * r["x_hat"]).sum(dim=0)
        want = s / torch.sqrt(var + 1e-5) * 1e-5 / (var + 1e-5)
        assert _gap((r["dz"] * r["x_hat"]).sum(dim=0), want) <= 1e-9 * (1 + float(want.abs().max()))


def test_examples_seen_is_what_the_sweep_trains_on():
    # 1,257 training digits: a batch of 32 takes 40 steps per epoch (the last of 9 examples).
    assert D.examples_seen(1257, 32, 2400, 100) == (3154, 100)
    assert D.examples_seen(1257, 2, 2400, 100) == (2400, 1200)  # a last batch of one dropped
    assert D.examples_seen(1257, 256, 2400, 100) == (25140, 100)
    assert D.examples_seen(10, 3, 7, 0) == (9, 3)
    # The sweep raises if its runs ever disagree with examples_seen; a tiny sweep runs it.
    acc = D.batch_size_sweep([5, 9], norms=("batch", "layer"), seeds=(0,), examples=40,
                             min_steps=3)
    assert set(acc) == {"batch", "layer"} and acc["batch"].shape == (1, 2)


def test_the_sweeps_models_take_the_datas_dtype_and_share_their_start_across_norms():
    from bncourse.distributed.experiments import _mlp

    a, b = _mlp("batch", (8,), seed=5), _mlp("group", (8,), seed=5)
    assert a[0].weight.dtype == torch.float64
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[-1].weight, b[-1].weight)


def test_accumulating_micro_batches_with_bn_is_one_step_of_ghost_bn():
    gaps = D.accumulation_gap("batch", micro=4, n_micro=3, seed=2)
    assert gaps["grad_rel_diff"] > 1e-2  # not the big batch's gradient
    assert gaps["ghost_grad_rel_diff"] < 1e-12  # but exactly ghost BN's
    assert gaps["ghost_running_mean_diff"] > 1e-4  # whose running statistics move differently


# --------------------------------------------------------------------------------------
# The one-round alternative: shifted sums
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 50.0, 1e4])
def test_shifted_sums_near_the_mean_keep_the_variance_in_float32(offset):
    rng = np.random.default_rng(0)
    x = (offset + 2.0 * rng.standard_normal((3000, 2))).astype(np.float32)
    true = x.astype(np.float64).var(axis=0)
    parts = np.split(x, 3)
    shift = np.float32(offset + 1.0)
    n, mean, var = D.merge_shifted_sums([D.shifted_sums(p, shift) for p in parts], shift)
    assert n == 3000
    np.testing.assert_allclose(var, true, rtol=1e-5)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-5)
    _, _, one_pass = D.merge_shifted_sums([D.shifted_sums(p) for p in parts])
    if offset >= 1e4:
        assert np.abs(one_pass - true).max() > 0.1 * true.max()  # about zero: cancellation
    # Tensors work too, and the sums add up (the all_reduce of the one-round form).
    t = torch.from_numpy(x.astype(np.float64))
    _, _, var_t = D.merge_shifted_sums([D.shifted_sums(t[:1000]), D.shifted_sums(t[1000:])])
    assert _gap(var_t, torch.from_numpy(true)) <= 1e-6 * float(true.max()) * (1 + offset**2)


def test_merge_all_is_a_tree_and_every_order_of_the_same_list_gives_the_same_bits():
    rng = np.random.default_rng(1)
    parts = [rng.normal(100.0, 1.0, (k, 2)).astype(np.float32) for k in (3, 5, 2, 7, 4)]
    triples = [(len(p), p.mean(axis=0), ((p - p.mean(axis=0)) ** 2).sum(axis=0)) for p in parts]
    first = D.merge_all(triples)
    again = D.merge_all(list(triples))
    assert first[0] == 21 and np.array_equal(first[2], again[2])
    # The tree: ((0, 1), (2, 3)), 4.
    m = D.merge_moments
    tree = m(m(m(triples[0], triples[1]), m(triples[2], triples[3])), triples[4])
    assert np.array_equal(first[1], tree[1]) and np.array_equal(first[2], tree[2])


def test_ddp_buffer_bytes_count_the_bn_buffers_of_a_built_resnet50():
    model = _resnet50()
    buffers = sum(b.numel() * b.element_size()
                  for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)
                  for b in mod.buffers())
    assert D.ddp_buffer_bytes_per_step(list(D.RESNET50_BN_CHANNELS)) == buffers


def test_the_benchmarks_local_copies_compute_what_a_group_of_ones_collectives_do(world_of_one):
    from bncourse.distributed import benchmark, sync

    torch.manual_seed(3)
    x = torch.randn(6, 4, dtype=torch.float64)
    dy = torch.randn(6, 4, dtype=torch.float64)
    out = []
    for context in (benchmark._local_copies, contextlib.nullcontext):
        layer = D.SyncBatchNorm(4, dtype=torch.float64)
        xi = x.clone().requires_grad_(True)
        with context():
            y = layer(xi)
            y.backward(dy)
        out.append((y.detach(), xi.grad, layer.weight.grad, layer.running_var.clone()))
    for a, b in zip(*out, strict=True):
        assert torch.equal(a, b)
    # and the collectives are back afterwards
    assert sync._all_gather.__name__ == "_all_gather"
    assert sync._all_reduce_sum.__name__ == "_all_reduce_sum"


def test_detached_statistics_keep_bns_forward_and_pass_the_gradient_of_constants():
    from bncourse.distributed.experiments import _mlp

    a, b = _mlp("batch", (6,), seed=2), _mlp("batch_detached", (6,), seed=2)
    x = torch.randn(5, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = b[0](x).detach().requires_grad_(True)
    y_det = b[1](z)
    assert _gap(y_det, a[1](z.detach())) <= 1e-12  # BN's forward pass
    assert _gap(b[1].running_var, a[1].running_var) <= 1e-15  # and its running statistics
    dy = torch.randn(y_det.shape, dtype=torch.float64)
    (dz,) = torch.autograd.grad(y_det, z, dy)
    var = z.detach().var(dim=0, unbiased=False)
    assert _gap(dz, dy * b[1].weight.detach() / torch.sqrt(var + b[1].eps)) <= 1e-12
    b.eval(), a.eval()
    assert _gap(b(x), a(x)) <= 1e-12  # eval mode: the running statistics, as BN


def test_the_benchmark_pins_its_processes_and_restores_the_affinity():
    from bncourse.distributed import benchmark

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    before = os.sched_getaffinity(0)
    with benchmark._on_cores(1) as used:
        assert used == 1 and len(os.sched_getaffinity(0)) == 1
        assert D.launch(W.affinity_worker, 1, timeout=60) == [1]  # inherited by the workers
    assert os.sched_getaffinity(0) == before
