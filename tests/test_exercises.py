"""Every registered exercise: the reference passes, each catalogued mistake is named, a stub
is "not attempted", and nothing a reader can type makes the checker raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bncourse.exercises import (
    EXERCISES,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    CheckResult,
    check,
    hint,
)
from bncourse.exercises.core import ChoiceExercise, FunctionExercise, NumberExercise

IDS = sorted(EXERCISES)
MISTAKES = [(eid, m.name) for eid in IDS for m in EXERCISES[eid].mistakes]
ANCHORS = ["formula.forward", "gradients.backward", "parameters.running_stats",
           "invariance.gradient_scale"]


def reference_answer(exercise):
    """The right answer as a reader would give it: the reference's own function is refused
    ("bncourse's own implementation"), so a function answer calls it from the reader's code."""
    if isinstance(exercise, FunctionExercise):
        reference = exercise.reference

        def answer(*args):
            return reference(*args)

        return answer
    if isinstance(exercise, NumberExercise):
        return exercise.value
    if isinstance(exercise, ChoiceExercise):
        return exercise.answer
    raise AssertionError(f"unknown kind of exercise {exercise!r}")


def _raises_not_implemented(*args):
    raise NotImplementedError


def _raises_value_error(*args):
    raise ValueError("boom")


def test_the_anchor_exercises_are_registered_with_their_kinds():
    kinds = {eid: EXERCISES[eid].kind for eid in ANCHORS}
    assert kinds == {"formula.forward": "function", "gradients.backward": "function",
                     "parameters.running_stats": "function",
                     "invariance.gradient_scale": "number"}


def test_every_chapter_has_at_least_one_exercise_and_ids_start_with_their_module():
    prefixes: dict[int, set[str]] = {}
    for eid, exercise in EXERCISES.items():
        assert exercise.id == eid
        prefixes.setdefault(exercise.chapter, set()).add(eid.split(".")[0])
        assert exercise.title and exercise.kind in {"function", "number", "choice"}
    assert {1, 2, 3, 4} <= set(prefixes)
    for chapter, names in prefixes.items():
        assert len(names) == 1, f"chapter {chapter} mixes the prefixes {sorted(names)}"
    assert len({next(iter(n)) for n in prefixes.values()}) == len(prefixes)


@pytest.mark.parametrize("eid", IDS)
def test_reference_answer_passes(eid):
    result = check(eid, reference_answer(EXERCISES[eid]))
    assert result.passed, f"{eid}: the reference answer fails: {result.message}"
    assert result.status == PASSED


@pytest.mark.parametrize(("eid", "name"), MISTAKES)
def test_each_catalogued_mistake_fails_with_its_own_message(eid, name):
    mistake = next(m for m in EXERCISES[eid].mistakes if m.name == name)
    result = check(eid, mistake.answer)
    assert result.status == FAILED, f"{eid}: mistake {name} was judged {result.status}"
    assert result.mistake == name, (
        f"{eid}: mistake {name} was reported as {result.mistake!r}: {result.message}"
    )
    assert result.message == mistake.message


@pytest.mark.parametrize("eid", IDS)
def test_mistake_messages_are_distinct(eid):
    messages = [m.message for m in EXERCISES[eid].mistakes]
    assert len(messages) == len(set(messages)), f"{eid} has two mistakes with one message"


@pytest.mark.parametrize("eid", IDS)
def test_untouched_stubs_are_not_attempted(eid):
    stubs = [None, Ellipsis]
    if EXERCISES[eid].kind == "function":
        stubs += [_raises_not_implemented, lambda *args: ...]
    if EXERCISES[eid].kind == "choice":
        stubs += ["", "  "]
    for stub in stubs:
        result = check(eid, stub)
        assert result.status == NOT_ATTEMPTED, (
            f"{eid}: stub {stub!r} judged {result.status}: {result.message}"
        )
        assert not result.passed


@pytest.mark.parametrize("eid", IDS)
def test_junk_answers_fail_with_a_message_and_never_raise(eid):
    junk = [3, "x", "zz", 2.5, [1.0, 2.0], {"a": 1}, _raises_value_error, lambda *a: "text",
            lambda *a: np.array([1.0]), lambda *a: (np.ones(2),) * 5, math.nan, True,
            np.array([1.0, 2.0]), torch.ones(3), object()]
    for answer in junk:
        result = check(eid, answer)
        assert isinstance(result, CheckResult)
        assert result.status in {FAILED, NOT_ATTEMPTED, PASSED}
        assert result.message, f"{eid}: empty message for {answer!r}"
        if result.status == PASSED:
            # Only a choice or number exercise whose answer happens to be this value.
            assert not callable(answer)


def test_exception_in_reader_code_is_reported_with_type_message_and_case():
    result = check("formula.forward", _raises_value_error)
    assert result.status == FAILED
    assert "ValueError" in result.message and "boom" in result.message
    assert "case" in result.message


def test_mutating_the_input_is_reported():
    def forward(x, gamma, beta, eps):
        x -= x.mean(axis=0)
        return x

    result = check("formula.forward", forward)
    assert result.status == FAILED and "in place" in result.message


def test_wrong_shape_dtype_and_nan_are_reported_clearly():
    def wrong_shape(x, gamma, beta, eps):
        return x[:1]

    def wrong_dtype(x, gamma, beta, eps):
        return x.astype(np.float32)

    def with_nan(x, gamma, beta, eps):
        return x * np.nan

    assert "shape" in check("formula.forward", wrong_shape).message
    assert "dtype" in check("formula.forward", wrong_dtype).message
    assert "NaN" in check("formula.forward", with_nan).message
    torch_out = check("formula.forward", lambda x, g, b, e: torch.tensor(x))
    assert "torch.Tensor" in torch_out.message


def test_number_answers_accept_every_real_type():
    for answer in (0.25, 1 / 4, np.float32(0.25), np.float64(0.25), np.array(0.25),
                   torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64)):
        assert check("invariance.gradient_scale", answer).passed, f"{answer!r} rejected"
    assert not check("invariance.gradient_scale", np.array([0.25])).passed


def test_number_feedback_does_not_reveal_the_value():
    result = check("invariance.gradient_scale", 0.3)
    assert result.status == FAILED
    assert "0.25" not in result.message and "1/4" not in result.message


def test_unknown_id_raises_key_error_naming_it():
    with pytest.raises(KeyError, match="no.such.exercise"):
        check("no.such.exercise", 1)
    with pytest.raises(KeyError, match="no.such.exercise"):
        hint("no.such.exercise")


def test_check_result_shows_itself_as_text_and_html():
    ok = check("invariance.gradient_scale", 0.25)
    bad = check("invariance.gradient_scale", 4)
    todo = check("invariance.gradient_scale", ...)
    assert str(ok).startswith("✔") and "Correct" in str(ok)
    assert str(bad).startswith("✘") and "Not yet" in str(bad)
    assert "Not attempted" in repr(todo)
    html = bad._repr_html_()
    assert "<div" in html and "Not yet" in html and "invariance.gradient_scale" in html
    assert bool(ok) and not bool(bad)


def test_html_escapes_the_message():
    result = check("formula.forward", lambda *a: "<script>")
    assert "<script>" not in result._repr_html_()


def test_choice_answers_are_case_insensitive():
    choices = [e for e in EXERCISES.values() if isinstance(e, ChoiceExercise)]
    for exercise in choices:
        assert check(exercise.id, exercise.answer.upper()).passed
        assert check(exercise.id, f" {exercise.answer} ").passed
        assert "not an option" in check(exercise.id, "zz").message


def test_error_messages_describe_arguments_by_shape_not_values():
    from bncourse.exercises.core import _describe_args

    text = _describe_args((np.ones((3, 2)), [np.ones(4), np.zeros((2, 2))], 0.1, "x" * 100))
    assert text == "array(3, 2), [array(4,), array(2, 2)], 0.1, str(...)"


def test_choice_answers_written_as_the_notebooks_print_the_options_are_accepted():
    for exercise in (e for e in EXERCISES.values() if isinstance(e, ChoiceExercise)):
        a = exercise.answer
        for written in (f"({a})", f"{a})", f"{a}.", f"{a}:", f" {a.upper()} ", f"( {a} )"):
            assert check(exercise.id, written).passed, f"{exercise.id}: {written!r} rejected"
        wrong = next(k for k in exercise.options if k != a)
        assert not check(exercise.id, f"({wrong})").passed


def test_a_wrong_option_carries_its_own_message_whatever_its_punctuation():
    exercise = EXERCISES["formula.conv_axes"]
    for mistake in exercise.mistakes:
        result = check(exercise.id, f"({mistake.answer.upper()})")
        assert result.mistake == mistake.name and result.message == mistake.message


def test_hints_are_progressive_and_say_when_there_are_no_more():
    from bncourse.exercises.core import NumberExercise as Number

    exercise = Number(id="t.hints", chapter=1, title="t", value=1.0,
                      hints=("first nudge", "second nudge", "last nudge"))
    assert exercise.hint_text().startswith("first nudge")
    assert exercise.hint_text(2).startswith("second nudge")
    assert exercise.hint_text(3).startswith("last nudge")
    assert "no more hints" in exercise.hint_text(4)
    with pytest.raises(ValueError, match="hint number"):
        exercise.hint_text(0)
    # The generic failure gives the first hint and points to the next one.
    message = exercise.check(2.0).message
    assert "first nudge" in message and "second nudge" not in message
    assert 'hint("t.hints", 2)' in message
    # A single ``hint`` is the only hint.
    single = Number(id="t.single", chapter=1, title="t", value=1.0, hint="only one")
    assert single.hint_text(1) == "only one" and "no more hints" in single.hint_text(2)


@pytest.mark.parametrize("eid", IDS)
def test_every_exercise_has_a_first_hint_and_an_end_to_its_hints(eid):
    exercise = EXERCISES[eid]
    assert hint(eid) == exercise.hint_text(1)
    assert "no more hints" in hint(eid, len(exercise.all_hints) + 1)


def test_the_generic_failure_message_is_punctuated_as_sentences():
    def off(x, gamma, beta, eps):
        return EXERCISES["formula.forward"].reference(x, gamma, beta, eps) + 0.5

    message = check("formula.forward", off).message
    assert "mistakes; " not in message and "usual mistakes. " in message


def test_bncourse_own_functions_are_refused_as_answers():
    from bncourse import functional

    for eid, answer in (("parameters.running_stats", functional.update_running_stats),
                        ("formula.forward", EXERCISES["formula.forward"].reference),
                        ("gradients.backward", functional.batch_norm_backward)):
        result = check(eid, answer)
        assert result.status == FAILED
        assert "bncourse's own implementation" in result.message and "write yours" in result.message
    message = check("parameters.running_stats", functional.update_running_stats).message
    assert "bncourse.functional.update_running_stats" in message


def test_progress_lists_every_exercise_by_chapter_with_its_latest_verdict():
    from bncourse.exercises import progress

    check("invariance.gradient_scale", 0.25)
    check("invariance.effective_lr", 123.0)
    check("invariance.effective_lr", 0.004)
    check("formula.conv_axes", "a")
    table = progress()
    rows = {row[1]: row for row in table.rows}
    assert set(rows) == set(EXERCISES)
    assert rows["invariance.gradient_scale"][4] == PASSED
    assert rows["invariance.effective_lr"][4] == PASSED  # the latest verdict counts
    assert rows["formula.conv_axes"][4] == FAILED
    text = str(table)
    for chapter in sorted({e.chapter for e in EXERCISES.values()}):
        assert f"Chapter {chapter}" in text
    assert all(eid in text for eid in EXERCISES)
    html = table._repr_html_()
    assert html.count("<table>") == len({e.chapter for e in EXERCISES.values()})
    assert "bncourse-passed" in html and "bncourse-failed" in html


# --------------------------------------------------------------------------------------
# Section "the checker is never wrong": right answers it must accept
# --------------------------------------------------------------------------------------


def test_a_zero_computed_in_float32_is_right_and_called_round_off():
    from bncourse.exercises.gradients import SUM_DX_DY, SUM_DX_EPS, SUM_DX_GAMMA, SUM_DX_X

    x = torch.tensor(SUM_DX_X, dtype=torch.float32, requires_grad=True)
    gamma = torch.tensor(SUM_DX_GAMMA, dtype=torch.float32)
    y = torch.nn.functional.batch_norm(x, None, None, gamma, None, training=True,
                                       eps=SUM_DX_EPS)
    y.backward(torch.tensor(SUM_DX_DY, dtype=torch.float32))
    for total in (float(x.grad.sum()), float(np.float32(1.0) + np.float32(2.0 ** -23)) - 1.0,
                  -EXERCISES["gradients.sum_dx"].roundoff):
        result = check("gradients.sum_dx", total)
        assert result.passed, f"{total!r}: {result.message}"
        if total != 0.0:
            assert "that is round-off; the exact value is 0" in result.message
    # Past float32 round-off of the terms, a number is wrong again.
    assert not check("gradients.sum_dx", 10 * EXERCISES["gradients.sum_dx"].roundoff).passed


def test_zero_scale_belongs_to_exercises_whose_value_is_zero():
    with pytest.raises(TypeError, match="zero_scale"):
        NumberExercise(id="t.z", chapter=1, title="t", value=1.0, zero_scale=2.0)
    exact = NumberExercise(id="t.z", chapter=1, title="t", value=0.0, atol=1e-12)
    assert not exact.check(1e-7).passed  # no zero_scale: no round-off allowance


def test_decimal_and_fraction_answers_are_numbers():
    import decimal
    import fractions

    assert check("invariance.gradient_scale", decimal.Decimal("0.25")).passed
    assert check("invariance.gradient_scale", fractions.Fraction(1, 4)).passed
    result = check("invariance.gradient_scale", decimal.Decimal("4"))
    assert result.mistake == "grows_with_scale"
    assert "Decimal" not in check("invariance.gradient_scale", decimal.Decimal("0.3")).message


def test_text_answers_to_number_exercises_say_what_is_wrong_with_them():
    quoted = check("invariance.gradient_scale", "0.25")
    assert quoted.status == FAILED and "without quotes" in quoted.message
    junk = check("invariance.gradient_scale", "a quarter")
    assert junk.status == FAILED and "'a quarter' is not a number" in junk.message
    assert check("invariance.gradient_scale", "  ").status == NOT_ATTEMPTED


def test_the_hand_computation_with_pytorchs_eps_is_recognised_and_names_eps():
    from bncourse.exercises import formula

    x, gamma, beta = formula.HAND_BATCH, formula.HAND_GAMMA, formula.HAND_BETA
    with_eps = gamma * (x[-1] - x.mean()) / np.sqrt(x.var() + 1e-5) + beta
    for written in (with_eps, round(with_eps, 5), round(with_eps, 6)):
        result = check("formula.hand_computed", written)
        assert result.status == FAILED and result.mistake is not None, (written, result)
        assert "eps" in result.message and "not the expected value" not in result.message
    assert check("formula.hand_computed", float(formula.HAND_COMPUTED.value)).passed


def test_a_near_miss_has_its_own_tolerance():
    from bncourse.exercises.core import Mistake

    exercise = NumberExercise(
        id="t.near", chapter=1, title="t", value=6.5, rtol=1e-6,
        mistakes=(Mistake("eps", "you used eps = 1e-5", 6.499985, rtol=1e-5),))
    assert exercise.check(6.49999).mistake == "eps"
    assert exercise.check(6.49997).mistake == "eps"
    assert exercise.check(6.5).passed  # the right value wins over a near miss
    assert exercise.check(6.4999).mistake is None


def test_an_answer_computed_in_float32_is_told_the_check_works_in_float64():
    reference = EXERCISES["formula.forward"].reference

    def forward32(x, gamma, beta, eps):
        y = reference(x.astype(np.float32), gamma.astype(np.float32),
                      beta.astype(np.float32), eps)
        return y.astype(x.dtype)

    result = check("formula.forward", forward32)
    assert result.status == FAILED
    assert "float32 round-off" in result.message and "float64" in result.message
    assert "not one of the usual mistakes" not in result.message


FUNCTION_IDS = [eid for eid in IDS if isinstance(EXERCISES[eid], FunctionExercise)]


def _in_float32(reference):
    """The reference computed in float32 on a float64 case, its outputs cast back to the
    input's dtype: right to float32 precision only."""

    def answer(*args):
        dtypes = [a.dtype for a in args if isinstance(a, np.ndarray)]
        small = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64
                      else a for a in args)
        out = reference(*small)
        dtype = dtypes[0] if dtypes else np.float64
        if isinstance(out, tuple):
            return tuple(np.asarray(o).astype(dtype) for o in out)
        return np.asarray(out).astype(dtype)

    return answer


@pytest.mark.parametrize("eid", FUNCTION_IDS)
def test_every_function_exercise_refuses_float32_precision_on_float64_cases(eid):
    exercise = EXERCISES[eid]
    assert any(not any(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in case.args)
               for case in exercise.all_cases()), f"{eid} has no float64 case"
    result = check(eid, _in_float32(exercise.reference))
    assert result.status == FAILED, (eid, result.message)
    assert "float32 round-off" in result.message and "float64" in result.message, result.message


@pytest.mark.parametrize("eid", [eid for eid in IDS if EXERCISES[eid].kind == "number"])
def test_a_wrong_number_close_to_the_value_is_shown_with_the_digits_that_differ(eid):
    exercise = EXERCISES[eid]
    value = exercise.value
    for near in (value + 3 * max(exercise.rtol * abs(value), exercise.atol, exercise.roundoff),
                 value - 3 * max(exercise.rtol * abs(value), exercise.atol, exercise.roundoff)):
        result = exercise.check(near)
        if result.mistake is not None:  # a catalogued near miss has its own message
            continue
        assert result.status == FAILED, (near, result.message)
        shown = float(result.message.split(" is not the expected value")[0])
        assert abs(shown - near) < abs(shown - value), (near, value, result.message)
    far = 2 * value + 1
    if exercise.check(far).mistake is None:
        assert exercise.check(far).message.startswith(f"{far:.6g} is not the expected value")


def test_the_digits_vectors_are_what_python_writes():
    import json
    from pathlib import Path

    from bncourse.exercises.core import distinct_digits

    vectors = json.loads((Path(__file__).parent / "data" / "number_digits.json").read_text())
    assert len(vectors) >= 10
    for v in vectors:
        assert distinct_digits(v["x"], v["value"]) == v["shown"]
        if v["x"] != v["value"]:  # the learner sees their number, not the value
            assert abs(float(v["shown"]) - v["x"]) < abs(float(v["shown"]) - v["value"]), v
    # written by hand: one past 6 digits, and 6 digits when they already differ
    assert distinct_digits(1.0000004, 1.0) == "1.0000004"
    assert distinct_digits(0.25, -1.25) == "0.25"


def test_the_number_field_accepts_what_a_person_writes():
    import json
    from pathlib import Path

    from bncourse.exercises.core import NumberTextError, page_answer, read_number

    vectors = json.loads((Path(__file__).parent / "data" / "number_inputs.json").read_text())
    assert {"1/4", "6,5", "\u22121.25", "1,000"} <= {v["input"] for v in vectors}
    exercise = NumberExercise(id="t.field", chapter=1, title="t", value=-1.25)
    for v in vectors:
        assert set(v) == {"input", "value", "error"}, v
        answer = page_answer(v["input"], "number")
        result = exercise.check(answer)
        if v["value"] is not None:
            assert v["error"] is None
            value = read_number(v["input"])
            assert value == v["value"] and math.copysign(1, value) == math.copysign(1, v["value"])
            assert answer == v["value"]
            assert result.passed == (v["value"] == -1.25), (v, result)
        else:
            assert v["error"] in result.message, (v, result.message)
            assert result.status == (NOT_ATTEMPTED if not v["input"].strip() else FAILED)
            if v["input"].strip() and v["error"] != "expected a finite number":
                with pytest.raises(NumberTextError, match=v["error"]):
                    read_number(v["input"])
    # the solution's own way of writing chapter 5's answer, and the learner's
    assert exercise.check(page_answer("\u22125/4", "number")).passed
    assert exercise.check(page_answer("-1,25", "number")).passed
    message = exercise.check(page_answer("1,250", "number")).message
    assert "1250" in message and "1.250" in message  # both readings
    assert "'1/0'" in exercise.check("1/0").message  # names what it could not read
    # a number written as Python text is still told to drop the quotes
    assert "without quotes" in exercise.check("1/4").message


def test_an_ndarray_gets_its_article():
    from bncourse.exercises.core import _a

    assert _a("ndarray") == "an ndarray" and _a("int") == "an int" and _a("list") == "a list"
    message = check("formula.conv_axes", np.array(["b"])).message
    assert "an ndarray" in message and "a ndarray" not in message


# --------------------------------------------------------------------------------------
# Wrong statuses: None, partial stubs
# --------------------------------------------------------------------------------------


def _right(eid):
    reference = EXERCISES[eid].reference

    def answer(*args):
        return reference(*args)

    return answer


def test_a_function_that_returns_none_has_failed_and_is_asked_about_return():
    right = _right("formula.forward")

    def forgot_return(x, gamma, beta, eps):
        right(x, gamma, beta, eps)

    def none_in_one_branch(x, gamma, beta, eps):
        if x.ndim == 2:
            return right(x, gamma, beta, eps)

    for answer in (forgot_return, none_in_one_branch):
        result = check("formula.forward", answer)
        assert result.status == FAILED, result
        assert "returned None for" in result.message
        assert "did you forget `return`?" in result.message
    assert "(N, C, H, W)" in check("formula.forward", none_in_one_branch).message or \
        "shape (" in check("formula.forward", none_in_one_branch).message


def test_only_the_untouched_stub_is_not_attempted():
    right = _right("formula.forward")

    def partly_done(x, gamma, beta, eps):
        if x.ndim > 2:
            raise NotImplementedError
        return right(x, gamma, beta, eps)

    result = check("formula.forward", partly_done)
    assert result.status == FAILED
    assert "NotImplementedError" in result.message and "other cases" in result.message
    assert check("formula.forward", _raises_not_implemented).status == NOT_ATTEMPTED


# --------------------------------------------------------------------------------------
# Robustness: nothing but KeyboardInterrupt escapes, and nothing fools the comparison
# --------------------------------------------------------------------------------------


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message")


def test_system_exit_and_unprintable_exceptions_are_failures():
    import sys

    def exits(*args):
        sys.exit(3)

    def raises_system_exit(*args):
        raise SystemExit("bye")

    def unprintable(*args):
        raise _Unprintable

    for eid in ("formula.forward", "gradients.backward", "invariance.jacobian"):
        for answer, word in ((exits, "sys.exit"), (raises_system_exit, "SystemExit"),
                             (unprintable, "_Unprintable")):
            result = check(eid, answer)
            assert result.status == FAILED and word in result.message, (eid, result)


def test_keyboard_interrupt_goes_through():
    def interrupted(*args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check("formula.forward", interrupted)


def test_expected_values_are_computed_before_the_answer_runs():
    import bncourse.functional as functional

    saved = functional.batch_norm_forward

    def sabotage(x, gamma, beta, eps):
        functional.batch_norm_forward = lambda *a, **k: (np.zeros_like(a[0]), None)
        return np.zeros_like(x)

    try:
        result = check("formula.forward", sabotage)
        assert result.status == FAILED
        assert functional.batch_norm_forward is saved, "the checker did not restore it"
    finally:
        functional.batch_norm_forward = saved


def test_replacing_numpy_comparisons_does_not_pass_and_is_undone():
    names = ("allclose", "isclose", "array_equal", "abs", "max", "all", "asarray")
    saved = {name: getattr(np, name) for name in names}

    def cheat(x, gamma, beta, eps):
        np.allclose = lambda *a, **k: True
        np.isclose = lambda a, b, **k: np.ones(np.shape(a), dtype=bool)
        np.array_equal = lambda *a, **k: True
        np.abs = lambda a: 0 * a
        np.max = lambda a, *r, **k: 0.0
        np.all = lambda *a, **k: True
        return np.zeros_like(x)

    try:
        assert check("formula.forward", cheat).status == FAILED
        assert all(getattr(np, name) is saved[name] for name in names)
        # A later wrong answer is still wrong.
        assert check("formula.forward", lambda x, g, b, e: x.copy()).status == FAILED
    finally:
        for name, value in saved.items():
            setattr(np, name, value)


class _AlwaysClose(np.ndarray):
    def __eq__(self, other):
        return np.ones(self.shape, dtype=bool)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return np.zeros(np.broadcast_shapes(*(np.shape(i) for i in inputs)))

    def allclose(self, *args, **kwargs):
        return True


def test_ndarray_subclasses_and_masked_arrays_are_judged_by_their_data():
    def subclass(x, gamma, beta, eps):
        return np.zeros_like(x).view(_AlwaysClose)

    def masked(x, gamma, beta, eps):
        return np.ma.masked_array(np.zeros_like(x), mask=np.ones(x.shape, dtype=bool))

    def masked_right(x, gamma, beta, eps):
        return np.ma.masked_array(EXERCISES["formula.forward"].reference(x, gamma, beta, eps))

    assert check("formula.forward", subclass).status == FAILED
    assert check("formula.forward", masked).status == FAILED
    assert check("formula.forward", masked_right).passed


def _slow_forward(seconds):
    right = _right("formula.forward")

    def slow(x, gamma, beta, eps):
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return right(x, gamma, beta, eps)

    return slow


def _short_limit(limit):
    import dataclasses

    return dataclasses.replace(EXERCISES["formula.forward"], time_limit=limit)


def test_an_answer_that_runs_too_long_is_stopped_with_a_clear_message():
    import time

    exercise = _short_limit(0.3)

    def endless(x, gamma, beta, eps):
        while True:
            pass

    def swallows_exceptions(x, gamma, beta, eps):
        try:
            while True:
                pass
        except Exception:
            return x

    for answer in (endless, swallows_exceptions):
        start = time.monotonic()
        result = exercise.check(answer)
        assert time.monotonic() - start < 5
        assert result.status == FAILED and "time limit" in result.message, result
    # After a stopped answer the checker still works. The right answer gets a generous limit:
    # its running time depends on the machine's load, and this asserts no timing of it.
    assert _short_limit(60.0).check(_right("formula.forward")).passed


def test_the_time_limit_holds_outside_the_main_thread_too():
    import threading
    import time

    exercise = _short_limit(0.3)
    results = []
    worker = threading.Thread(target=lambda: results.append(exercise.check(_slow_forward(2))))
    start = time.monotonic()
    worker.start()
    worker.join(10)
    assert time.monotonic() - start < 5 and results
    assert results[0].status == FAILED and "time limit" in results[0].message


# --------------------------------------------------------------------------------------
# The case rule, and the wrong answers it exposes
# --------------------------------------------------------------------------------------

FUNCTION_IDS = [eid for eid in IDS if isinstance(EXERCISES[eid], FunctionExercise)]


def _rule_says(what):
    """The function exercises whose case rule has ``what`` (has_gamma, has_channels, ...)."""
    return [eid for eid in FUNCTION_IDS
            if EXERCISES[eid].rule is not None and getattr(EXERCISES[eid].rule, what)]


@pytest.mark.parametrize("eid", FUNCTION_IDS)
def test_every_function_exercise_has_a_case_list_that_follows_the_rule(eid):
    from bncourse.exercises._cases import RULES

    exercise = EXERCISES[eid]
    assert eid in RULES, f"{eid} has no case rule in bncourse/exercises/_cases.py RULES"
    assert exercise.rule is RULES[eid]
    problems = exercise.rule.problems(exercise.all_cases())
    assert not problems, f"{eid}: its cases break the rule: {problems}"
    # The rule's cases are seeded: the same list on every call.
    again = exercise.all_cases()
    for a, b in zip(exercise.all_cases(), again, strict=True):
        assert a.label == b.label
        for u, v in zip(a.args, b.args, strict=True):
            assert np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v


def test_the_lists_of_relevant_exercises_are_not_empty():
    for what in ("has_gamma", "has_channels", "dtype_promised"):
        assert _rule_says(what), what


def test_the_rule_notices_each_missing_kind_of_case():
    from bncourse.exercises._cases import CaseRule

    rule = CaseRule("t.rule", ("x", "gamma", "beta", "eps"), (2, 3, 4, 5),
                    dtype_promised=True)
    cases = rule.cases()
    assert rule.problems(cases) == []
    only_2d = [c for c in cases if c.args[0].ndim == 2]
    assert "no case of rank 5" in rule.problems(only_2d)
    positive = [c for c in cases if (c.args[1] > 0).all()]
    assert {"no negative gamma", "no zero gamma"} <= set(rule.problems(positive))
    assert "no one-channel case (C = 1)" in rule.problems(
        [c for c in cases if c.args[0].shape[1] != 1])
    assert "no float32 case" in rule.problems(
        [c for c in cases if c.args[0].dtype != np.float32])
    assert "no repeated shape with new values" in rule.problems(cases[:1])


def _channel_shape(ndim):
    return (1, -1) + (1,) * (ndim - 2)


def _axes_right(ndim):
    return (0, *range(2, ndim))


def _axes_only_for_4d(ndim):
    return (0, 2, 3) if ndim == 4 else (0,)


def _axes_up_to_4d(ndim):
    return {2: (0,), 3: (0, 2)}.get(ndim, (0, 2, 3))


def _forward_by(axes_of):
    def forward(x, gamma, beta, eps):
        axes, shape = axes_of(x.ndim), _channel_shape(x.ndim)
        mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        return gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)

    return forward


def _backward_by(axes_of):
    def backward(dy, x, gamma, eps):
        axes, shape = axes_of(x.ndim), _channel_shape(x.ndim)
        m = int(np.prod([x.shape[a] for a in axes]))
        mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        x_hat = (x - mu) * inv_std
        dbeta = dy.sum(axis=axes, keepdims=True)
        dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)
        dx = gamma.reshape(shape) * inv_std / m * (m * dy - dbeta - x_hat * dgamma)
        return dx, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)

    return backward


def _param_grads_by(axes_of):
    def param_grads(dy, x_hat):
        axes = axes_of(dy.ndim)
        return (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)

    return param_grads


def _running_stats_by(axes_of):
    def update(running_mean, running_var, batch, momentum):
        axes = axes_of(batch.ndim)
        mean, var = batch.mean(axis=axes), batch.var(axis=axes, ddof=1)
        return ((1 - momentum) * running_mean + momentum * mean,
                (1 - momentum) * running_var + momentum * var)

    return update


def _eval_backward_by(axes_of):
    def eval_backward(dy, x, gamma, running_mean, running_var, eps):
        axes, shape = axes_of(x.ndim), _channel_shape(x.ndim)
        inv_std = 1.0 / np.sqrt(running_var + eps)
        x_hat = (x - running_mean.reshape(shape)) * inv_std.reshape(shape)
        return (dy * (gamma * inv_std).reshape(shape), (dy * x_hat).sum(axis=axes),
                dy.sum(axis=axes))

    return eval_backward


WRITTEN_BY_AXES = {
    "formula.forward": _forward_by,
    "gradients.backward": _backward_by,
    "gradients.param_grads": _param_grads_by,
    "parameters.running_stats": _running_stats_by,
    "inference.eval_backward": _eval_backward_by,
}


def _ranks(eid):
    return EXERCISES[eid].rule.ranks


@pytest.mark.parametrize("eid", [e for e in WRITTEN_BY_AXES if e in EXERCISES])
def test_answers_with_axes_chosen_by_rank_fail_where_the_statement_allows_that_rank(eid):
    write = WRITTEN_BY_AXES[eid]
    assert check(eid, write(_axes_right)).passed, "the test's own implementation is wrong"
    if 3 in _ranks(eid) or 5 in _ranks(eid):
        assert check(eid, write(_axes_only_for_4d)).status == FAILED
    if 5 in _ranks(eid):
        assert check(eid, write(_axes_up_to_4d)).status == FAILED


def _role_wrapped(eid, change_args=None, change_outputs=None):
    reference, rule = EXERCISES[eid].reference, EXERCISES[eid].rule

    def answer(*args):
        values = dict(zip(rule.roles, args, strict=True))
        if change_args:
            values = change_args(values)
        out = reference(*(values[r] for r in rule.roles))
        return change_outputs(out) if change_outputs else out

    return answer


@pytest.mark.parametrize("eid", _rule_says("has_gamma"))
def test_a_scale_that_loses_the_sign_of_gamma_fails(eid):
    def abs_gamma(values):
        return {**values, "gamma": abs(values["gamma"])}

    assert check(eid, _role_wrapped(eid)).passed
    assert check(eid, _role_wrapped(eid, change_args=abs_gamma)).status == FAILED


@pytest.mark.parametrize("eid", _rule_says("has_channels"))
def test_an_answer_that_squeezes_away_one_channel_fails(eid):
    def squeezed(out):
        return tuple(np.squeeze(o) for o in out) if isinstance(out, tuple) else np.squeeze(out)

    assert check(eid, _role_wrapped(eid, change_outputs=squeezed)).status == FAILED


@pytest.mark.parametrize("eid", _rule_says("dtype_promised"))
def test_an_answer_that_always_returns_float64_fails_where_the_dtype_is_promised(eid):
    def in_float64(values):
        return {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v
                for k, v in values.items()}

    result = check(eid, _role_wrapped(eid, change_args=in_float64))
    assert result.status == FAILED and "dtype" in result.message


@pytest.mark.parametrize("eid", FUNCTION_IDS)
def test_an_answer_memoized_by_shape_fails(eid):
    right, memo = _right(eid), {}

    def memoized(*args):
        key = tuple(a.shape for a in args if isinstance(a, np.ndarray))
        if key not in memo:
            memo[key] = right(*args)
        return memo[key]

    assert check(eid, memoized).status == FAILED


@pytest.mark.parametrize("eid", _rule_says("dtype_promised"))
def test_float32_cases_accept_a_right_answer_computed_in_float32(eid):
    reference = EXERCISES[eid].reference

    def native(*args):  # the reference run on the float32 arrays as they are
        return reference(*args)

    assert check(eid, native).passed


def test_the_backward_with_axes_chosen_by_rank_and_the_bessel_corrected_one_are_named():
    # Both used to get the generic message; the catalogue of gradients.backward names them.
    axes_by_rank = check("gradients.backward", _backward_by(_axes_only_for_4d))
    assert axes_by_rank.status == FAILED and axes_by_rank.mistake is not None, axes_by_rank

    def bessel_corrected(dy, x, gamma, eps):
        axes, shape = _axes_right(x.ndim), _channel_shape(x.ndim)
        m = x.size // x.shape[1]
        mu = x.mean(axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True, ddof=1) + eps)
        x_hat = (x - mu) * inv_std
        dbeta = dy.sum(axis=axes, keepdims=True)
        dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)
        dx = gamma.reshape(shape) * inv_std / m * (m * dy - dbeta - x_hat * dgamma)
        return dx, dgamma.reshape(-1), dbeta.reshape(-1)

    bessel = check("gradients.backward", bessel_corrected)
    assert bessel.status == FAILED and bessel.mistake is not None, bessel
    assert "unbiased" in bessel.message


def test_verdict_html_follows_the_theme_and_hard_codes_no_light_background():
    import re

    for answer in (0.25, 4.0, ...):
        html = check("invariance.gradient_scale", answer)._repr_html_()
        assert "var(--pst-color-" in html and "color: inherit" in html
        for background in re.findall(r"background:\s*([^;]+);", html):
            # Only a translucent tint: the page's own background shows through.
            match = re.fullmatch(r"rgba\(\d+, \d+, \d+, (0?\.\d+)\)", background.strip())
            assert match and float(match.group(1)) <= 0.2, background


def test_the_site_export_holds_what_the_page_needs_for_every_exercise():
    import json

    from bncourse.exercises import site_data
    from bncourse.exercises.core import MESSAGES, page_answer

    data = json.loads(json.dumps(site_data()))  # JSON as the site stores it
    assert set(data["exercises"]) == set(EXERCISES)
    assert data["messages"] == MESSAGES
    for eid, exported in data["exercises"].items():
        exercise = EXERCISES[eid]
        assert exported["kind"] == exercise.kind and exported["hints"] == list(exercise.all_hints)
        if exercise.kind == "number":
            assert exported["value"] == exercise.value and exported["roundoff"] == exercise.roundoff
            assert [m["message"] for m in exported["mistakes"]] == [
                m.message for m in exercise.mistakes]
            for m in exported["mistakes"]:  # each exported wrong value is named as Python does
                assert check(eid, page_answer(repr(m["answer"]), "number")).mistake == m["name"]
        if exercise.kind == "choice":
            assert exported["answer"] == exercise.answer
            assert exported["options"] == exercise.options
            for m in exported["mistakes"]:
                assert check(eid, m["answer"]).mistake == m["name"]


def test_page_answer_reads_a_field_as_the_page_does():
    from bncourse.exercises.core import page_answer

    assert page_answer(" 1e-3 ", "number") == 1e-3
    assert page_answer("-.5", "number") == -0.5
    assert page_answer("1/4", "number") == 0.25 and page_answer("6,5", "number") == 6.5
    for text in ("0x10", "1_000", "inf", "nan", "abc", "", "1,000", "1/0"):
        assert page_answer(text, "number") == text
    assert page_answer("(b)", "choice") == "(b)"


@pytest.mark.parametrize("bn_class", ["torch", "bncourse"])
def test_the_inference_mode_exercise_is_what_torch_does(bn_class):
    # parameters.inference_mode_train: a BN layer in train() mode called inside
    # torch.inference_mode(). The reference answer (c) must be what happens, and each wrong
    # option's claim must be false: no error (b), the batch's statistics are used (a), and the
    # running statistics move (a, d). The outputs are inference tensors (c).
    import bncourse

    exercise = EXERCISES["parameters.inference_mode_train"]
    assert exercise.answer == "c"
    layer = torch.nn.BatchNorm1d(3) if bn_class == "torch" else bncourse.BatchNorm(3)
    layer.train()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)) + 5.0
    with torch.inference_mode():
        y = layer(x)                                        # (b): no error
    assert layer.training, "inference_mode must not change the module's mode"
    batch = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    assert torch.allclose(y, batch, atol=1e-5), "(a): the batch's statistics are used"
    assert torch.allclose(layer.running_mean, 0.1 * x.mean(0)), "(a, d): the statistics move"
    assert int(layer.num_batches_tracked) == 1
    assert y.is_inference() and not layer.running_mean.is_inference()
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (y * torch.ones(3, requires_grad=True)).sum().backward()
