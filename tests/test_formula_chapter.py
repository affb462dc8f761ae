"""Chapter 1's exercises and figures: the references, the catalogues, the plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bncourse import BatchNorm
from bncourse.exercises import EXERCISES, NOT_ATTEMPTED, PASSED, check, formula
from bncourse.functional import batch_norm_forward, reduction_axes
from bncourse.networks import LayerDrift, UnitTrace, batch_dependence, output_std
from bncourse.plotting import MAX_WIDTH, plt
from bncourse.plotting.transform import (
    plot_batch_dependence,
    plot_depth_scale,
    plot_eps_effect,
    plot_unit_input_over_training,
)

CHAPTER_IDS = [i for i, ex in EXERCISES.items() if ex.chapter == 1]


def _raises(*_args):
    raise NotImplementedError


def test_chapter_one_has_at_least_four_exercises_of_all_kinds():
    assert len(CHAPTER_IDS) >= 4
    assert {EXERCISES[i].kind for i in CHAPTER_IDS} == {"function", "number", "choice"}
    assert all(i.startswith("formula.") for i in CHAPTER_IDS)


def test_hand_computed_value_matches_torch_layer():
    # The hand computation has eps = 0, which torch refuses in training mode; 1e-300 added to
    # a variance of order one changes no bit of it in float64.
    bn = torch.nn.BatchNorm1d(1, eps=1e-300, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.fill_(formula.HAND_GAMMA)
        bn.bias.fill_(formula.HAND_BETA)
    y = bn(torch.tensor(formula.HAND_BATCH)[:, None])
    assert math.isclose(float(y.detach()[-1, 0]), formula.HAND_COMPUTED.value, rel_tol=1e-12)
    assert check("formula.hand_computed", 6.5).status == PASSED


def test_eval_output_matches_torch_eval_mode_and_ignores_the_batch():
    bn = torch.nn.BatchNorm1d(1, eps=formula.EVAL_EPS, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.fill_(formula.EVAL_RUNNING_MEAN)
        bn.running_var.fill_(formula.EVAL_RUNNING_VAR)
        bn.weight.fill_(formula.EVAL_GAMMA)
        bn.bias.fill_(formula.EVAL_BETA)
    batch = torch.tensor(formula.EVAL_BATCH)[:, None]
    with torch.no_grad():
        alone = bn(batch[:1])
        together = bn(batch)
    assert math.isclose(float(together[0, 0]), formula.EVAL_OUTPUT.value, rel_tol=1e-12)
    assert float(alone[0, 0]) == float(together[0, 0])


def test_conv_axes_answer_is_reduction_axes_of_a_4d_input():
    assert reduction_axes(4) == (0, 2, 3)
    assert "(0, 2, 3)" in formula.CONV_AXES.options[formula.CONV_AXES.answer]


@pytest.mark.parametrize("case", formula.identity_cases(), ids=lambda c: c.label)
def test_identity_reference_makes_bn_the_identity(case):
    x, eps = case.args
    gamma, beta = formula.IDENTITY.reference(x, eps)
    y = batch_norm_forward(x, gamma, beta, eps)[0]
    err = float(np.max(np.abs(y - x)))
    assert err < 1e-12, f"BN with the identity parameters moved x by up to {err:.2e}"


@pytest.mark.parametrize("exercise_id", CHAPTER_IDS)
def test_every_catalogued_mistake_is_recognised_by_name(exercise_id):
    exercise = EXERCISES[exercise_id]
    assert len(exercise.mistakes) >= 2
    for mistake in exercise.mistakes:
        result = check(exercise_id, mistake.answer)
        assert result.mistake == mistake.name, (
            f"{exercise_id}: mistake {mistake.name} was judged {result.status!r}, "
            f"matched {result.mistake!r}")


@pytest.mark.parametrize("exercise_id", CHAPTER_IDS)
def test_stubs_are_not_attempted_and_junk_never_raises(exercise_id):
    for stub in (None, Ellipsis, _raises) if EXERCISES[exercise_id].kind == "function" else (
            None, Ellipsis):
        assert check(exercise_id, stub).status == NOT_ATTEMPTED
    for junk in (3, "zzz", lambda *a: 1 / 0):
        assert check(exercise_id, junk).status != PASSED


def test_mistake_messages_do_not_reveal_the_answers():
    for exercise in (formula.HAND_COMPUTED, formula.EVAL_OUTPUT):
        for mistake in exercise.mistakes:
            for shown in (f"{exercise.value:g}", f"{exercise.value:.2f}"):
                assert shown not in mistake.message, f"{mistake.name} shows {shown}"


def _texts(fig: Figure) -> list[str]:
    return [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]


def _trace(placement: str) -> UnitTrace:
    steps = np.arange(0, 50, 5)
    pct = np.sort(np.random.default_rng(1).normal(size=(steps.size, 3)), axis=1)
    return UnitTrace(placement, 0, (15.0, 50.0, 85.0), steps, pct,
                     LayerDrift(0.5, 1.0, 2.0, 0.5, 0.25))


def test_figures_have_titles_labelled_axes_and_fit_the_page():
    rng = np.random.default_rng(0)
    layers = [rng.normal(0, s, (32, 4)) for s in (1.0, 3.0)]
    result = batch_dependence(batch_sizes=(4, 8), n_batches=50)
    sigma = np.geomspace(1e-3, 1.0, 5)
    figures = [
        plot_depth_scale(layers, layers),
        plot_unit_input_over_training([_trace("none"), _trace("before")]),
        plot_batch_dependence(result.train, result.eval, result.example),
        plot_eps_effect(sigma, {1e-3: output_std(sigma, 1e-3)}),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert fig.get_figwidth() <= MAX_WIDTH
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        assert title, "figure without a title"
        assert all(ax.get_xlabel() for ax in fig.axes), _texts(fig)
        assert any(ax.get_ylabel() for ax in fig.axes), _texts(fig)
        plt.close(fig)
    with pytest.raises(ValueError):
        plot_depth_scale(layers, layers[:1])
    with pytest.raises(ValueError):
        plot_unit_input_over_training([])


def test_hand_computed_with_pytorch_default_eps_is_named():
    bn = BatchNorm(1, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.fill_(formula.HAND_GAMMA)
        bn.bias.fill_(formula.HAND_BETA)
        with_eps = float(bn(torch.tensor(formula.HAND_BATCH)[:, None])[-1, 0])
    result = check("formula.hand_computed", with_eps)
    assert result.mistake == "eps_included", (result.status, result.mistake)
    assert "eps" in result.message


def test_no_grad_answer_is_what_torch_does():
    """In training mode under no_grad, torch's layer uses the batch's statistics and still
    moves its running statistics: option (c), and not what the other options say."""
    bn = torch.nn.BatchNorm1d(1, dtype=torch.float64)
    batch = 10.0 + torch.randn(64, 1, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bn(batch)
    assert abs(float(out.mean())) < 1e-9, "the output was not normalized with the batch mean"
    moved = float(bn.running_mean[0])
    assert math.isclose(moved, 0.1 * float(batch.mean()), rel_tol=1e-12)
    assert formula.NO_GRAD.answer == "c"
    assert check("formula.no_grad", "c").status == PASSED


def test_histogram_edge_answer_is_the_bound_seen_in_the_batch_dependence_run():
    result = batch_dependence(batch_sizes=(4,), n_batches=2000, seed=0)
    largest = float(np.abs(result.train[4]).max())
    assert largest <= math.sqrt(3) and largest > 0.95 * math.sqrt(3), largest
    assert "sqrt(m - 1)" in formula.HISTOGRAM_EDGE.options[formula.HISTOGRAM_EDGE.answer]


@pytest.mark.parametrize("exercise_id", CHAPTER_IDS)
def test_every_exercise_has_progressive_hints(exercise_id):
    assert len(EXERCISES[exercise_id].all_hints) >= 2


def test_small_spread_answer_is_what_the_layer_does():
    x = formula.SMALL_SPREAD_STD * np.random.default_rng(0).standard_normal((4096, 1)) + 3.0
    bn = torch.nn.BatchNorm1d(1, eps=formula.SMALL_SPREAD_EPS, dtype=torch.float64)
    std = float(bn(torch.from_numpy(x)).detach().std(correction=0))
    assert 0.25 < std < 0.35, f"std of the output {std:.3f}, option (b) says about 0.3"
    assert "0.3" in formula.SMALL_SPREAD.options[formula.SMALL_SPREAD.answer]
