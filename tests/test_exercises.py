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
