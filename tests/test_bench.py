"""The deterministic part of the benchmark: what each variant saves for backward, that all
variants compute the same thing, and that a quick run writes the JSON the chapter reads.

No timing is asserted here: times depend on the machine, and `make bench` reports them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import bncourse
from bncourse import bench

SHAPES = [(6, 3), (5, 4, 3), (4, 3, 2, 5), (2, 3, 2, 2, 3)]
EAGER_VARIANTS = ["torch", "bncourse", "staged"]


def _activation_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.finfo(dtype).bits // 8


def _channel_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return shape[1] * torch.finfo(dtype).bits // 8


def _has_compiler() -> bool:
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


# ---------------------------------------------------------------------------------------
# Bytes saved for the backward pass
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bncourse_saves_one_activation_sized_tensor_plus_per_channel_vectors(shape, dtype):
    inputs = bench.make_inputs(shape, dtype)
    saved = bench.saved_for_backward("bncourse", inputs)
    numel, c = math.prod(shape), shape[1]
    assert saved.activation_sized(numel) == 1, (
        f"bncourse.BatchNorm saved {saved.activation_sized(numel)} activation-sized tensors "
        f"for shape {shape}, expected exactly 1 (its input x); saved shapes: {saved.shapes}"
    )
    others = [s for s in saved.shapes if math.prod(s) != numel]
    assert all(math.prod(s) == c for s in others), (
        f"besides x, bncourse should save only per-channel vectors of {c} values; "
        f"saved shapes: {saved.shapes}"
    )
    # x, mean, inv_std and gamma.
    expected = _activation_bytes(shape, dtype) + 3 * _channel_bytes(shape, dtype)
    assert saved.nbytes == expected, (
        f"bncourse saved {saved.nbytes} bytes for shape {shape} ({dtype}), expected "
        f"{expected} = x + mean + inv_std + gamma; off by {saved.nbytes - expected}"
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_graph_saves_at_least_two_activation_sized_tensors(shape):
    dtype = torch.float32
    inputs = bench.make_inputs(shape, dtype)
    staged = bench.saved_for_backward("staged", inputs)
    compact = bench.saved_for_backward("bncourse", inputs)
    numel = math.prod(shape)
    n_act = staged.activation_sized(numel)
    assert n_act >= 2, (
        f"the staged graph saved {n_act} activation-sized tensors for shape {shape}, "
        f"expected at least 2 (the centred input and x_hat); saved shapes: {staged.shapes}"
    )
    assert staged.nbytes >= 2 * _activation_bytes(shape, dtype), (
        f"the staged graph saved {staged.nbytes} bytes, less than two activations "
        f"({2 * _activation_bytes(shape, dtype)} bytes)"
    )
    # Staged: two activations and two per-channel vectors; bncourse: one activation (x)
    # and three per-channel vectors.
    extra = staged.nbytes - compact.nbytes
    expected = _activation_bytes(shape, dtype) - _channel_bytes(shape, dtype)
    assert extra == expected, (
        f"the staged graph saved {extra} bytes more than bncourse for shape {shape}; "
        f"expected one activation less one per-channel vector ({expected} bytes)"
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_native_layer_saves_its_input_plus_per_channel_vectors(shape):
    dtype = torch.float32
    inputs = bench.make_inputs(shape, dtype)
    saved = bench.saved_for_backward("torch", inputs)
    numel, c = math.prod(shape), shape[1]
    assert saved.activation_sized(numel) == 1, (
        f"torch's BatchNorm saved {saved.activation_sized(numel)} activation-sized tensors "
        f"for shape {shape}, expected 1 (its input); saved shapes: {saved.shapes}"
    )
    n_channel = saved.count - 1
    assert all(math.prod(s) in (numel, c) for s in saved.shapes), saved.shapes
    expected = _activation_bytes(shape, dtype) + n_channel * _channel_bytes(shape, dtype)
    assert saved.nbytes == expected, (
        f"torch saved {saved.nbytes} bytes for shape {shape}, expected {expected} "
        f"(input + {n_channel} per-channel vectors)"
    )


def test_saved_bytes_do_not_depend_on_the_values():
    shape = (4, 3, 2, 5)
    for variant in EAGER_VARIANTS:
        a = bench.saved_for_backward(variant, bench.make_inputs(shape, seed=0))
        b = bench.saved_for_backward(variant, bench.make_inputs(shape, seed=1))
        assert (a.nbytes, a.shapes) == (b.nbytes, b.shapes), (
            f"{variant}: saved {a.nbytes} bytes {a.shapes} with seed 0 but "
            f"{b.nbytes} bytes {b.shapes} with seed 1"
        )


# ---------------------------------------------------------------------------------------
# Every variant computes the same function (float64, torch's layer as the reference)
# ---------------------------------------------------------------------------------------


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(((a - b).abs() / (a.abs() + b.abs()).clamp_min(1e-12)).max())


def _assert_same_as_torch(variant: str, shape: tuple[int, ...], tol: float) -> None:
    inputs = bench.make_inputs(shape, torch.float64, seed=3)
    reference = bench.forward_backward(*bench.make_forward("torch", inputs), inputs)
    result = bench.forward_backward(*bench.make_forward(variant, inputs), inputs)
    for name, want, got in zip(("y", "dx", "dgamma", "dbeta"), reference, result, strict=True):
        assert got.shape == want.shape, f"{variant} {name}: shape {got.shape} != {want.shape}"
        assert got.dtype == torch.float64, f"{variant} {name}: dtype {got.dtype}"
        err = _max_rel_diff(got, want)
        assert err < tol, (
            f"{variant} {name} differs from torch's layer for shape {shape}: "
            f"max relative difference {err:.2e} (tolerance {tol:.0e})"
        )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", ["bncourse", "staged"])
def test_eager_variants_match_torch_in_float64(variant, shape):
    _assert_same_as_torch(variant, shape, tol=1e-10)


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="torch.compile needs a C++ compiler")
def test_compiled_variant_matches_torch_and_saves_one_activation():
    shape = (4, 3, 2, 5)
    _assert_same_as_torch("compiled", shape, tol=1e-10)
    inputs = bench.make_inputs(shape, torch.float32)
    compiled = bench.saved_for_backward("compiled", inputs)
    numel, channels = math.prod(shape), shape[1]
    assert compiled.activation_sized(numel) == 1, (
        f"the compiled path saved {compiled.activation_sized(numel)} activation-sized "
        f"tensors: {compiled.shapes}"
    )
    others = [s for s in compiled.shapes if math.prod(s) != numel]
    assert all(math.prod(s) == channels for s in others), (
        f"besides x (from which the backward recomputes x_hat) the compiled path should save "
        f"only per-channel vectors: {compiled.shapes}"
    )


def test_forward_backward_is_repeatable_without_accumulating_gradients():
    inputs = bench.make_inputs((6, 3), torch.float64)
    step = bench.make_forward("bncourse", inputs)
    first = bench.forward_backward(*step, inputs)
    second = bench.forward_backward(*step, inputs)
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} changed between two identical steps"
    assert inputs.x.grad is None, "forward_backward should not accumulate into x.grad"


# ---------------------------------------------------------------------------------------
# The quick run, end to end, and the JSON schema the chapter reads
# ---------------------------------------------------------------------------------------


def test_quick_run_writes_json_with_the_documented_schema(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    shapes = [(6, 3), (4, 3, 2, 2)]
    code = bench.main(
        ["--quick", "--no-compile", "--shapes", "6x3", "4x3x2x2", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "6x3" in printed and "4x3x2x2" in printed, f"table lacks the shapes:\n{printed}"

    data = json.loads(out.read_text())
    assert set(data) == {"command", "machine", "load_average", "settings", "confidence", "dtype",
                         "shapes", "rows", "paired_ratios", "compile_seconds", "floor",
                         "compiled_network"}, set(data)
    assert data["command"] == (
        f"python -m bncourse.bench --quick --no-compile --shapes 6x3 4x3x2x2 --out {out}"
    ), data["command"]
    assert len(data["load_average"]) == 2 and all(
        isinstance(v, float) and v >= 0 for v in data["load_average"]), data["load_average"]
    assert data["settings"] == {"quick": True, **bench.QUICK}, data["settings"]
    assert data["confidence"] == 0.95
    machine = data["machine"]
    assert set(machine) == {"device", "cpu", "cores", "threads", "torch", "python", "date"}, (
        set(machine))
    assert machine["device"] == "cpu"
    for key, kind in (("cpu", str), ("cores", int), ("threads", int), ("torch", str),
                      ("python", str), ("date", str)):
        assert isinstance(machine[key], kind), f"machine[{key!r}] = {machine[key]!r}"
    assert data["dtype"] == "float32"
    assert data["shapes"] == [list(s) for s in shapes]
    assert data["compile_seconds"] == {}, "compile_seconds should be empty with --no-compile"
    assert data["compiled_network"] is None, "no compiled network with --no-compile"

    rows = data["rows"]
    assert [(r["shape"], r["variant"]) for r in rows] == [
        (list(s), v) for s in shapes for v in EAGER_VARIANTS
    ]
    for r in rows:
        assert set(r) == {"shape", "variant", "repeats", "median_ms", "ratio_to_torch",
                          "ratio_low", "ratio_high", "saved_bytes"}, r
        assert isinstance(r["repeats"], int) and r["repeats"] >= bench.QUICK["min_reps"], r
        assert isinstance(r["median_ms"], float) and r["median_ms"] > 0, r
        assert isinstance(r["ratio_to_torch"], float) and r["ratio_to_torch"] > 0, r
        assert 0 < r["ratio_low"] <= r["ratio_to_torch"] <= r["ratio_high"], r
        assert isinstance(r["saved_bytes"], int) and r["saved_bytes"] > 0, r
        if r["variant"] == "torch":
            assert r["ratio_to_torch"] == r["ratio_low"] == r["ratio_high"] == 1.0, r
        pair = data["paired_ratios"]["x".join(map(str, r["shape"]))]
        if r["variant"] != "torch":
            assert pair[f"{r['variant']}/torch"] == {
                "median": r["ratio_to_torch"], "low": r["ratio_low"], "high": r["ratio_high"],
                "n": r["repeats"]}, (r, pair)
        expected = bench.saved_for_backward(
            r["variant"], bench.make_inputs(tuple(r["shape"]))
        ).nbytes
        assert r["saved_bytes"] == expected, (
            f"{r['variant']} {r['shape']}: JSON says {r['saved_bytes']} bytes, "
            f"saved_tensors measures {expected}"
        )


    assert data["floor"]["passes"] == bench.PASSES
    assert set(data["floor"]["shapes"]) == {"6x3", "4x3x2x2"}
    for key, record in data["floor"]["shapes"].items():
        assert set(record) == {"median_ms", "floor/torch", "bncourse/floor"}, record
        assert record["median_ms"] > 0, record
        for name in ("floor/torch", "bncourse/floor"):
            r = record[name]
            assert 0 < r["low"] <= r["median"] <= r["high"] and r["n"] >= 6, (key, name, r)


# ---------------------------------------------------------------------------------------
# The composite floor
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_floor_step_computes_torchs_step_and_running_statistics(shape):
    inputs = bench.make_inputs(shape, torch.float64, seed=2)
    step = bench.floor_step(inputs, momentum=0.1)
    layer, params = bench.make_forward("torch", inputs)
    for _ in range(2):  # the running statistics move twice, from the same start
        got = step()
        want = bench.forward_backward(layer, params, inputs)
    for name, g, w in zip(("y", "dx", "dgamma", "dbeta"), got, want, strict=True):
        assert g.shape == w.shape and g.dtype == torch.float64, (name, g.shape, g.dtype)
        err = float((g - w.detach()).abs().max() / w.detach().abs().max())
        assert err < 1e-12, f"floor {name} differs from torch's layer by {err:.1e}, {shape}"
    for name in ("running_mean", "running_var"):
        err = float((getattr(step, name) - getattr(layer, name)).abs().max())
        assert err < 1e-12, f"floor {name} differs from torch's layer by {err:.1e}, {shape}"


def _input_sized_passes(kernels: list[tuple[str, int]], nbytes: int) -> int:
    """Passes over input-sized tensors: a kernel's bytes over the input's, rounded down (its
    per-channel vectors are smaller than one), less the output buffer an ``.out`` kernel
    receives as an argument, which it writes and does not read."""
    return sum(b // nbytes - (1 if name.endswith(".out") else 0) for name, b in kernels)


@pytest.mark.parametrize("shape, key", [((256, 64), "floor (N, C)"),
                                        ((16, 8, 6, 6), "floor (N, C, *spatial)")])
def test_floor_and_layer_make_the_passes_the_docstring_counts(shape, key):
    from bncourse.analysis import _TrafficCounter

    inputs = bench.make_inputs(shape)
    nbytes = inputs.x.numel() * inputs.x.element_size()
    step = bench.floor_step(inputs)
    with _TrafficCounter() as floor:
        step()
    forward, params = bench.make_forward("bncourse", inputs)
    with _TrafficCounter() as ours:
        bench.forward_backward(forward, params, inputs)
    assert _input_sized_passes(floor.by_kernel, nbytes) == bench.PASSES[key], floor.by_kernel
    assert _input_sized_passes(ours.by_kernel, nbytes) == bench.PASSES[key], ours.by_kernel
    assert ours.kernels - floor.kernels == 8, (ours.kernels, floor.kernels)


def test_paired_ratios_cover_every_ordered_pair_of_variants(tmp_path):
    out = tmp_path / "bench.json"
    data = bench.run(shapes=[(6, 3)], quick=True, compile=False, out=out)
    pairs = data["paired_ratios"]["6x3"]
    assert set(pairs) == {f"{a}/{b}" for a in EAGER_VARIANTS for b in EAGER_VARIANTS if a != b}
    for name, r in pairs.items():
        assert r["low"] <= r["median"] <= r["high"] and r["n"] >= 6, (name, r)
    assert json.loads(out.read_text()) == data


def test_paired_ratio_of_a_timing_is_the_median_with_a_distribution_free_interval():
    times = {"torch": [1.0] * 9, "bncourse": [float(k) for k in range(1, 10)]}
    timing = bench.Timing((4, 2), times)
    r = timing.paired_ratio("bncourse")
    assert r.median == 5.0 and r.n == 9
    # With 9 ratios the 95% interval of the median runs from the 2nd to the 8th smallest.
    assert (r.low, r.high) == (2.0, 8.0), r
    assert timing.ratio("bncourse") == 5.0


def test_command_line_names_only_the_options_that_differ_from_the_defaults():
    assert bench.command_line() == "python -m bncourse.bench"
    assert bench.command_line(out="book/data/bench.json") == "python -m bncourse.bench"
    assert bench.command_line(device="cuda", out="book/data/bench-cuda.json") == (
        "python -m bncourse.bench --device cuda")
    assert bench.command_line(shapes=[(8, 4)], quick=True, compile=False, threads=2,
                              seed=3, out="x y.json") == (
        "python -m bncourse.bench --quick --no-compile --shapes 8x4 --out 'x y.json' "
        "--threads 2 --seed 3")


def test_shape_option_rejects_malformed_shapes():
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--no-compile", "--shapes", "6", "--out", "unused.json"])
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--no-compile", "--shapes", "6xa", "--out", "unused.json"])


def test_device_option_refuses_cuda_clearly_where_there_is_none(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as info:
        bench.main(["--quick", "--no-compile", "--device", "cuda", "--shapes", "6x3",
                    "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err, err
    assert not out.exists(), "nothing should be written when the device is refused"
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench.run(shapes=[(6, 3)], quick=True, compile=False, out=None, device="cuda")
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--no-compile", "--device", "tpu", "--out", str(out)])


def test_device_option_cpu_is_the_default_and_runs(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--no-compile", "--device", "cpu", "--shapes", "6x3",
                       "--out", str(out)]) == 0
    assert json.loads(out.read_text())["machine"]["device"] == "cpu"
    inputs = bench.make_inputs((4, 3), device="cpu")
    assert inputs.x.device.type == "cpu" and inputs.x.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_variants_match_torch_on_the_gpu():
    inputs = bench.make_inputs((8, 4, 3, 3), torch.float32, seed=1, device="cuda")
    reference = bench.forward_backward(*bench.make_forward("torch", inputs), inputs)
    for variant in ("bncourse", "staged"):
        result = bench.forward_backward(*bench.make_forward(variant, inputs), inputs)
        for name, want, got in zip(("y", "dx", "dgamma", "dbeta"), reference, result,
                                   strict=True):
            assert got.device.type == "cuda", f"{variant} {name} left the GPU"
            err = float((got - want).abs().max() / want.abs().max())
            assert err < 1e-4, f"{variant} {name}: difference {err:.2e} of the largest value"


# ---------------------------------------------------------------------------------------
# The compiled network: torch's BN against ours inside the same compiled conv net
# ---------------------------------------------------------------------------------------


def test_the_two_networks_compute_the_same_function():
    x = torch.randn(bench.NET_INPUT, generator=torch.Generator().manual_seed(0))[:4]
    a = bench.conv_net(torch.nn.BatchNorm2d)
    b = bench.conv_net(bncourse.BatchNorm)
    assert [type(m) for m in b] != [type(m) for m in a]
    b.load_state_dict(a.state_dict())
    ya, yb = a(x), b(x)
    assert ya.shape == (4, bench.NET_CHANNELS, *bench.NET_INPUT[2:])
    assert float((ya - yb).abs().max()) < 1e-5


def test_network_timing_runs_six_networks_compiled_as_one_graph_and_eager(monkeypatch):
    # Inductor takes long to compile here; aot_eager traces the same graphs (fullgraph=True
    # raises at a graph break), which is what this test checks.
    real_compile = torch.compile
    compiled = []

    def compile_with_aot_eager(model, **kw):
        compiled.append(model)
        return real_compile(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    settings = {"warmup": 1, "budget_s": 0.0, "min_reps": 6, "max_reps": 6}
    timing = bench.time_compiled_network(settings)
    assert set(timing.times) == set(bench.NET_VARIANTS)
    assert all(len(t) == 6 for t in timing.times.values()), timing.times
    assert timing.reps == 6 and timing.compile_seconds > 0
    # Exactly the networks named compiled went through torch.compile, with the right BN.
    kinds = {"torch": torch.nn.BatchNorm2d, "bncourse": bncourse.BatchNorm,
             "identity": torch.nn.Identity}
    want = sorted(k for k, c in bench.NET_VARIANTS.values() if c)
    got = sorted(next(k for k, t in kinds.items() if isinstance(m[1], t)) for m in compiled)
    assert got == want, got

    record = bench.network_record(timing)
    assert set(record) == {"description", "input", "repeats", "median_ms", "ratio",
                           "eager_ratio", "bn_over_identity", "compile_seconds"}, set(record)
    assert set(record["median_ms"]) == set(bench.NET_VARIANTS)
    want_ratio = {
        "ratio": timing.paired_ratio("bncourse", "torch"),
        "eager_ratio": timing.paired_ratio("bncourse eager", "torch eager"),
    }
    for key, r in want_ratio.items():
        assert record[key]["median"] == round(r.median, bench.RATIO_DECIMALS), (key, record)
        assert record[key]["n"] == 6
    eager = record["bn_over_identity"]["eager"]
    assert eager["median"] == round(
        timing.paired_ratio("torch eager", "identity eager").median, bench.RATIO_DECIMALS)
    for r in (record["ratio"], record["eager_ratio"], eager,
              record["bn_over_identity"]["compiled"]):
        assert 0 < r["low"] <= r["median"] <= r["high"], r


def test_network_with_identity_has_the_same_convolutions_and_no_bn():
    net = bench.conv_net(bench._net_bn("identity"))
    ref = bench.conv_net(torch.nn.BatchNorm2d)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net)
    for i in (0, 3):
        assert torch.equal(net[i].weight, ref[i].weight)
    with pytest.raises(ValueError, match="unknown BN layer 'group'"):
        bench._net_bn("group")


def test_stored_json_has_the_compiled_network_the_chapter_reads():
    data = json.loads((Path(__file__).parents[1] / bench.DEFAULT_OUT).read_text())
    net = data["compiled_network"]
    assert data["command"] == "python -m bncourse.bench", data["command"]
    assert set(net) == {"description", "input", "repeats", "median_ms", "ratio",
                        "eager_ratio", "bn_over_identity", "compile_seconds"}, (
        f"{set(net)}: run python -m bncourse.bench to write the eager and Identity networks")
    assert net["input"] == list(bench.NET_INPUT)
    assert set(net["median_ms"]) == set(bench.NET_VARIANTS)
    ratios = [net["ratio"], net["eager_ratio"], *net["bn_over_identity"].values()]
    assert set(net["bn_over_identity"]) == {"compiled", "eager"}
    for r in ratios:
        assert set(r) == {"median", "low", "high", "n"} and r["n"] == net["repeats"] >= 6, r
        assert 0 < r["low"] <= r["median"] <= r["high"], r
    assert [list(s) for s in bench.SHAPES] == data["shapes"]
