"""Grade one response against its reference: equal, different, or why there was nothing to compare."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from orchestrator.tools.grading.extract import extract_final_answer
from orchestrator.tools.grading.values import Num, Seq, Value, parse_answer

__all__ = ["REASONS", "AnswerCheck", "check_answer", "check_answers"]

# Why a check came out as it did. equal / different: an answer was found and compared. no answer: the
# response holds no final answer. empty answer: it does, but it is empty once normalized. empty
# reference: the reference is empty once normalized (never counts as correct). internal error: a safety
# net that the tests fuzz for; it should never be seen.
REASONS: tuple[str, ...] = (
    "equal",
    "different",
    "no answer",
    "empty answer",
    "empty reference",
    "internal error",
)


@dataclass(frozen=True)
class AnswerCheck:
    """The outcome of one check; ``reason`` is one of ``REASONS``."""

    correct: bool
    extracted: str | None  # the final answer found in the response (None: none found)
    reason: str


def _rounds_to(value: Fraction, target: Fraction, places: int) -> bool:
    """Whether ``value`` rounded half away from zero to ``places`` decimals equals ``target``."""
    scale = 10**places
    numerator, denominator = value.numerator * scale, value.denominator
    rounded = (2 * abs(numerator) + denominator) // (2 * denominator)
    return Fraction(rounded if numerator >= 0 else -rounded, scale) == target


def _same_number(reference: Num, answer: Num) -> bool:
    readings = [(reference.value, reference.places)]
    if reference.percent:
        places = None if reference.places is None else reference.places + 2
        readings.append((reference.value / 100, places))
    for value, places in readings:
        if answer.value == value or (places is not None and _rounds_to(answer.value, value, places)):
            return True
    return False


def _same(reference: Value, answer: Value) -> bool:
    if isinstance(reference, Num):
        return isinstance(answer, Num) and _same_number(reference, answer)
    if isinstance(reference, Seq):
        return (
            isinstance(answer, Seq)
            and reference.brackets == answer.brackets
            and len(reference.items) == len(answer.items)
            and all(_same(r, a) for r, a in zip(reference.items, answer.items, strict=True))
        )
    return isinstance(answer, str) and reference == answer


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


def _check(response: str, reference: str) -> AnswerCheck:
    extracted = extract_final_answer(_as_text(response))
    reference_text, reference_value = parse_answer(_as_text(reference))
    if not reference_text:
        return AnswerCheck(False, extracted, "empty reference")
    if extracted is None:
        return AnswerCheck(False, None, "no answer")
    answer_text, answer_value = parse_answer(extracted)
    if not answer_text:
        return AnswerCheck(False, extracted, "empty answer")
    correct = _same(reference_value, answer_value)
    return AnswerCheck(correct, extracted, "equal" if correct else "different")


def check_answer(response: str, reference: str) -> AnswerCheck:
    """Whether ``response``'s final answer equals ``reference``; never raises."""
    try:
        return _check(response, reference)
    except Exception:  # pragma: no cover - a safety net; the tests fuzz for it
        return AnswerCheck(False, None, "internal error")


def check_answers(pairs: Iterable[tuple[str, str]]) -> list[AnswerCheck]:
    """``check_answer`` over (response, reference) pairs, in order."""
    return [check_answer(response, reference) for response, reference in pairs]
