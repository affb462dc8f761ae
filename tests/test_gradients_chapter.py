"""The gradients chapter: its analysis helpers, its figures and its exercises."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from bncourse import analysis
from bncourse.exercises import NOT_ATTEMPTED, PASSED, check
from bncourse.exercises import gradients as ex
from bncourse.functional import batch_norm_backward, batch_norm_forward, reduction_axes

from .strategies import BNInput, bn_inputs

# --------------------------------------------------------------------------------------
# The consequences of the compact form
# --------------------------------------------------------------------------------------


@pytest.mark.verifies("prop-gradients-orthogonal", "eq-gradients-orthogonal")
@settings(max_examples=40, deadline=None)
@given(bn_inputs())
def test_input_gradient_sums_to_zero_and_is_orthogonal_to_x_hat_up_to_eps(inp: BNInput):
    _, cache = batch_norm_forward(inp.x, inp.gamma, inp.beta, inp.eps)
    dx, dgamma, _ = batch_norm_backward(inp.dy, cache)
    axes = reduction_axes(inp.x.ndim)
    scale = np.abs(inp.gamma * cache.inv_std) * np.abs(inp.dy).sum(axis=axes) + 1e-300
    total = dx.sum(axis=axes)
    assert np.all(np.abs(total) <= 1e-10 * scale), f"sum of dx over the batch: {total}"
    measured = (dx * cache.x_hat).sum(axis=axes)
    predicted = inp.gamma * dgamma * cache.inv_std * inp.eps / (cache.var + inp.eps)
    err = np.abs(measured - predicted)
    assert np.all(err <= 1e-9 * scale), (
        f"sum of dx * x_hat {measured} differs from the prediction {predicted} by {err}"
    )


def test_gradient_consequences_are_zero_for_the_true_gradient_and_not_for_dy():
    rng = np.random.default_rng(1)
    x, dy, gamma = rng.normal(size=(16, 3)), rng.normal(size=(16, 3)), np.ones(3)
    _, cache = batch_norm_forward(x, gamma, np.zeros(3), eps=0.0)
    dx, _, _ = batch_norm_backward(dy, cache)
    s, o = analysis.gradient_consequences(dx, cache.x_hat)
    assert np.abs(s).max() < 1e-13 and np.abs(o).max() < 1e-13, (s, o)
    s_dy, _ = analysis.gradient_consequences(dy, cache.x_hat)
    assert np.abs(s_dy).max() > 1e-3, "dy itself is not centred, the check must see that"


# --------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------


def _small_batch():
    rng = np.random.default_rng(0)
    return rng.normal(2.0, 3.0, (6, 2)), rng.uniform(0.5, 2.0, 2), rng.normal(size=(6, 2))


@pytest.mark.verifies("eq-gradients-central")
def test_fd_sweep_float64_is_most_accurate_at_a_middle_step():
    x, gamma, dy = _small_batch()
    hs = np.logspace(-12, -0.5, 24)
    err = analysis.fd_error_sweep(x, gamma, dy, hs)
    best = hs[int(np.argmin(err))]
    assert 1e-7 <= best <= 1e-3, f"the best step is {best:.1e}, expected near 1e-5"
    assert err.min() < 1e-9, f"best relative error {err.min():.1e}"
    assert err[0] > 1e3 * err.min(), "round-off must dominate at h = 1e-12"
    assert err[-1] > 1e3 * err.min(), "truncation must dominate at h = 0.3"


def test_fd_sweep_float32_cannot_reach_float64_accuracy():
    x, gamma, dy = _small_batch()
    hs = np.logspace(-8, -0.5, 12)
    err32 = analysis.fd_error_sweep(x, gamma, dy, hs, dtype=np.float32)
    assert err32.min() > 1e-7, f"float32 reached {err32.min():.1e}"


def test_fd_sweep_detects_a_wrong_analytic_gradient():
    # Sanity of the instrument: the same sweep against the "constants" gradient fails.
    x, gamma, dy = _small_batch()
    _, cache = batch_norm_forward(x, gamma, np.zeros(2))
    wrong = gamma * dy * cache.inv_std
    numeric = analysis.numerical_gradient(
        lambda z: analysis._loss(z, gamma, dy, 1e-5, np.float64), x, 1e-5)
    assert analysis.rel_error(wrong, numeric) > 1e-2


# --------------------------------------------------------------------------------------
# The "statistics are constants" gradient
# --------------------------------------------------------------------------------------


@pytest.mark.verifies("eq-gradients-constants")
def test_constants_gradient_equals_the_direct_path_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    gamma = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(8, 3, generator=g, dtype=torch.float64)
    got = analysis.constants_gradient(x, gamma, dy)
    want = gamma * dy / torch.sqrt(x.var(0, correction=0) + 1e-5)
    assert torch.allclose(got, want, rtol=1e-12, atol=0), (got - want).abs().max()


def test_constants_error_shrinks_for_noise_and_stays_near_one_over_the_noise_for_a_shift():
    errors = analysis.constants_error_vs_batch([16, 1024], seed=0, shift_noise=0.1)
    assert errors["random"][1] < errors["random"][0] / 3, errors["random"]
    assert 5.0 < errors["shift"][1] < 20.0, errors["shift"]
    other = analysis.constants_error_vs_batch([1024], seed=0, shift_noise=0.02)
    assert 25.0 < other["shift"][0] < 100.0, "the error of a shared shift is set by 1/a"


def test_constants_error_slopes_are_near_minus_one_half_for_random_dy():
    slopes = analysis.constants_error_slopes([16, 64, 256, 1024], seeds=range(4))
    assert slopes.shape == (4,)
    assert np.all((-0.7 < slopes) & (slopes < -0.3)), slopes
    with pytest.raises(ValueError, match="two sizes"):
        analysis.constants_error_slopes([4, 8, 16], seeds=[0], m_min=16)


def test_constants_error_for_a_shared_shift_is_one_over_the_noise_amplitude():
    amplitudes = np.array([0.01, 0.1, 1.0])
    errors = analysis.constants_error_vs_amplitude(amplitudes, m=1024)
    np.testing.assert_allclose(errors, 1.0 / amplitudes, rtol=0.05)
    with pytest.raises(ValueError, match="positive"):
        analysis.constants_error_vs_amplitude([0.1, 0.0])


def test_float32_rounding_limits_are_the_spacings_of_x_and_f():
    x, gamma, dy = _small_batch()
    lim = analysis.float32_rounding_limits(x, gamma, dy)
    assert lim["max_abs_x"] == np.abs(x).max()
    assert np.float32(lim["max_abs_x"]) + np.float32(lim["x_spacing"]) != np.float32(
        lim["max_abs_x"])
    assert np.float32(lim["max_abs_x"]) + np.float32(0.49 * lim["x_spacing"]) == np.float32(
        lim["max_abs_x"]), "below half the spacing, x + h rounds to x"
    assert lim["f_spacing"] == np.spacing(np.float32(abs(lim["f"])))
    assert 0 < lim["min_abs_dx"]


# --------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------


def test_saved_bytes_compact_keeps_one_activation_and_staged_two():
    saved = analysis.saved_bytes_by_variant((32, 16))
    numel = 32 * 16
    assert saved["bncourse"].activation_sized(numel) == 1
    assert saved["staged"].activation_sized(numel) == 2
    assert saved["torch"].activation_sized(numel) == 1
    c = 16
    # bncourse, like torch: the input itself and three per-channel vectors (mean, inv_std,
    # gamma); staged: the centred input, x_hat and two per-channel vectors.
    assert saved["bncourse"].nbytes == 4 * (numel + 3 * c)
    assert saved["staged"].nbytes == 4 * (2 * numel + 2 * c)


def test_traffic_counts_native_kernels_as_five_tensor_passes():
    per_element, kernels = analysis.traffic_per_element("torch", (64, 32))
    assert kernels == 3
    # x read, y written; dy and x read, dx written: 5 float32 passes plus per-channel vectors.
    assert 20.0 <= per_element < 21.0, per_element


def test_traffic_of_eager_variants_exceeds_the_native_kernels():
    t = {v: analysis.traffic_per_element(v, (64, 32))[0] for v in ("torch", "bncourse", "staged")}
    assert t["torch"] < t["bncourse"] < t["staged"], t


def test_unknown_variant_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="torch, bncourse, staged"):
        analysis.saved_bytes_by_variant((4, 2), variants=("keras",))


def _bench(tmp_path, **changes):
    ratios = {"torch": 1.0, "bncourse": 2.0, "staged": 5.0, "compiled": 0.8}
    table = {
        "command": "python -m bncourse.bench",
        "machine": {"cpu": "test", "cores": 2, "threads": 2, "torch": "x", "python": "3",
                    "date": "today"},
        "load_average": [0.1, 0.2],
        "settings": {"quick": False, "warmup": 10, "budget_s": 30.0, "min_reps": 80,
                     "max_reps": 3000},
        "confidence": 0.95,
        "dtype": "float32",
        "shapes": [[4, 2]],
        "rows": [{"shape": [4, 2], "variant": v, "repeats": 9, "median_ms": ratios[v],
                  "ratio_to_torch": ratios[v], "ratio_low": 0.9 * ratios[v],
                  "ratio_high": 1.1 * ratios[v], "saved_bytes": 32} for v in analysis.VARIANTS],
        "paired_ratios": {"4x2": {
            f"{a}/{b}": {"median": ratios[a] / ratios[b], "low": 0.8 * ratios[a] / ratios[b],
                         "high": 1.2 * ratios[a] / ratios[b], "n": 9}
            for a in analysis.VARIANTS for b in analysis.VARIANTS if a != b}},
    }
    table.update(changes)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(table))
    return path


def test_load_bench_accepts_the_schema_and_names_missing_fields(tmp_path):
    bench = analysis.load_bench(_bench(tmp_path))
    assert len(bench["rows"]) == 4
    with pytest.raises(ValueError, match="machine.cpu"):
        analysis.load_bench(_bench(tmp_path, machine={"cores": 2}))
    for key in ("command", "load_average", "paired_ratios"):
        table = json.loads(_bench(tmp_path).read_text())
        del table[key]
        (tmp_path / "partial.json").write_text(json.dumps(table))
        with pytest.raises(ValueError, match=key):
            analysis.load_bench(tmp_path / "partial.json")
    table = json.loads(_bench(tmp_path).read_text())
    del table["paired_ratios"]["4x2"]["staged/bncourse"]
    (tmp_path / "partial.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="paired_ratios.4x2.staged/bncourse"):
        analysis.load_bench(tmp_path / "partial.json")


def test_bench_ratio_reads_a_paired_ratio_with_its_interval(tmp_path):
    from bncourse.claims import Ratio

    bench = analysis.load_bench(_bench(tmp_path))
    r = analysis.bench_ratio(bench, (4, 2), "staged", "bncourse")
    assert r == Ratio(2.5, 2.0, 3.0, 9, 0.95), r
    assert analysis.bench_ratio(bench, [4, 2], "bncourse").median == 2.0
    with pytest.raises(KeyError, match="8x2"):
        analysis.bench_ratio(bench, (8, 2), "bncourse")
    per_byte = analysis.ratio_over(r, 2.5)
    assert (per_byte.median, per_byte.low, per_byte.high) == (1.0, 0.8, 1.2), per_byte
    with pytest.raises(ValueError, match="positive"):
        analysis.ratio_over(r, 0.0)


def test_two_pass_kernels_read_more_than_the_single_pass_count_sees():
    # torch's kernels, seen from outside: x read and y written; dy and x read and dx written.
    seen = analysis.traffic_per_element("torch", (64, 32))[0] // 4
    assert seen == 5, seen
    # Inside: x twice more for the two-pass statistics, dy and x once more for the sums.
    assert analysis.NATIVE_CPU_PASSES == seen + 4 == 9
    assert analysis.COMPILED_PASSES == analysis.NATIVE_CPU_PASSES


def test_achieved_bandwidth_is_bytes_over_time(tmp_path):
    bench = analysis.load_bench(_bench(tmp_path))
    rows = analysis.achieved_bandwidth(bench, {"torch": 20.0})
    assert len(rows) == 1
    assert rows[0]["gb_per_s"] == pytest.approx(20.0 * 8 / 1e-3 / 1e9)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def test_figures_have_titles_and_labelled_axes(tmp_path):
    from bncourse.plotting import COLORS, MAX_WIDTH
    from bncourse.plotting import gradients as plots

    x, gamma, dy = _small_batch()
    hs = np.logspace(-10, -1, 6)
    figs = [
        plots.plot_fd_sweep(hs, analysis.fd_error_sweep(x, gamma, dy, hs), x_rounds_below=1e-7),
        plots.plot_constants_error([8, 16], analysis.constants_error_vs_batch([8, 16]),
                                   [0.1, 1.0], analysis.constants_error_vs_amplitude([0.1, 1.0])),
        plots.plot_cost(analysis.load_bench(_bench(tmp_path))),
    ]
    for fig in figs:
        assert fig.get_figwidth() <= MAX_WIDTH
        for ax in fig.axes:
            assert ax.get_title(), "every panel states its finding in a title"
            assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes in {ax.get_title()!r}"
    assert len(figs[1].axes) == 2, "the error against m, and against the noise amplitude"
    assert "2 threads" in figs[2].get_suptitle()
    one = json.loads(_bench(tmp_path).read_text())
    one["machine"]["threads"] = 1
    (tmp_path / "one.json").write_text(json.dumps(one))
    suptitle = plots.plot_cost(analysis.load_bench(tmp_path / "one.json")).get_suptitle()
    assert "1 thread," in suptitle, suptitle
    assert not figs[2].axes[0].get_legend(), "the legend sits outside the panels"
    assert figs[2].axes[0].containers, "the time panel draws bars"
    assert figs[2].axes[0].collections, "with error bars for the intervals"
    graph = plots.plot_forward_graph()
    assert graph.get_figwidth() <= MAX_WIDTH
    assert graph.axes[0].get_title()
    assert len(graph.axes[0].texts) >= 9
    colours = {t.get_text(): t.get_bbox_patch().get_edgecolor() for t in graph.axes[0].texts
               if t.get_bbox_patch() is not None}
    from matplotlib.colors import to_rgba

    mu = next(c for k, c in colours.items() if "mu_B =" in k)
    assert mu == to_rgba(COLORS["train"]), "batch statistics in the batch-statistics colour"


def test_forward_graph_has_four_paths_from_x_to_x_hat_and_one_to_the_loss_per_path():
    from bncourse.plotting import gradients as plots

    paths = plots.forward_graph_paths("x", "xhat")
    assert len(paths) == 4, paths
    assert ("x", "c", "xhat") in paths and ("x", "mu", "c", "v", "s", "xhat") in paths
    assert all(p[0] == "x" and p[-1] == "xhat" for p in paths)
    assert plots.forward_graph_paths("gamma", "L") == [("gamma", "y", "L")]
    assert plots.forward_graph_paths("xhat", "x") == []
    with pytest.raises(ValueError, match="nodes"):
        plots.forward_graph_paths("x", "z")


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------


def test_param_grads_reference_matches_the_full_backward():
    for case in ex.param_grad_cases():
        dy, x_hat = case.args
        dgamma, dbeta = ex._reference_param_grads(dy, x_hat)
        axes = reduction_axes(dy.ndim)
        assert dgamma.shape == (dy.shape[1],)
        np.testing.assert_allclose(dbeta, dy.sum(axis=axes))


def test_sum_dx_value_is_what_the_backward_computes():
    _, cache = batch_norm_forward(ex.SUM_DX_X, ex.SUM_DX_GAMMA, np.zeros(1), ex.SUM_DX_EPS)
    total = float(batch_norm_backward(ex.SUM_DX_DY, cache)[0].sum())
    assert check("gradients.sum_dx", total).status == PASSED, total


def test_buggy_backward_is_wrong_only_in_dx():
    rng = np.random.default_rng(3)
    x, gamma, dy = rng.normal(size=(8, 3)), rng.uniform(0.5, 2, 3), rng.normal(size=(8, 3))
    _, cache = batch_norm_forward(x, gamma, np.zeros(3))
    right = batch_norm_backward(dy, cache)
    wrong = ex.buggy_backward(dy, x, gamma, 1e-5)
    assert analysis.rel_error(right[0], wrong[0]) > 1e-2
    np.testing.assert_allclose(wrong[1], right[1], rtol=1e-12)
    np.testing.assert_allclose(wrong[2], right[2], rtol=1e-12)


@pytest.mark.parametrize("exercise", ex.EXERCISES, ids=lambda e: e.id)
def test_chapter_exercises_name_every_catalogued_mistake(exercise):
    for mistake in exercise.mistakes:
        result = check(exercise.id, mistake.answer)
        assert result.mistake == mistake.name, (
            f"{exercise.id}: the answer of mistake {mistake.name!r} was judged "
            f"{result.status} / {result.mistake!r}: {result.message}"
        )
    assert check(exercise.id, None).status == NOT_ATTEMPTED


def test_round_up_gives_a_bound_with_the_digits_shown():
    assert analysis.round_up(2.61779e-06, 2) == 2.7e-06
    assert analysis.round_up(4.49, 2) == 4.5
    assert analysis.round_up(12.0443, 3) == 12.1
    assert analysis.round_up(4.5, 2) == 4.5, "a value already at the digits stays"
    assert analysis.round_up(0.0999, 1) == 0.1
    for value in (1e-7, 3.14159, 987.6, 0.0123):
        assert value <= analysis.round_up(value, 2) < value * 1.11, value
    with pytest.raises(ValueError, match="positive"):
        analysis.round_up(0.0)
