"""What the fake engine says: a deterministic "model" whose loaded weights version shows in its answers.

The answer to a request is a pure function of (problem, ``seed``, weights version):

- The problem is found by the prompt: the engine is given the dataset (``--fake-answers FILE``, the JSONL
  of ``{"id", "prompt", "answer"}`` rows that ``dataset.uri`` names), and a request is about the dataset
  prompt its text starts with or contains (the longest such prompt). So a test or a trainer sends the
  dataset's own prompts, with any chat template around them, and the fake knows the right answer without
  anything extra in the request. A prompt found in no row is answered with an arbitrary integer.
- Whether the answer is right is drawn once per (problem, seed): right iff ``u < p_correct(version)``,
  with ``p_correct`` rising from 0.2 at version 0 towards 1. A problem solved at one version stays solved at
  every later one, so the share of correct answers grows with the version, never by chance alone.
- The first turn (no ```` ```output ```` block in the text yet) carries a ```` ```python ```` tool call in
  about a third of the answers (the code prints the candidate answer; at low versions some of that code
  raises ``NameError``); every other answer is final and ends in ``\\boxed{N}``, except a share that
  shrinks with the version and states the answer without a box (a format fault).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FakeModel", "Reply", "load_answers", "p_correct", "read_version"]

VERSION_FILE = "version"  # in a weights directory: the version as a decimal integer

TOOL_OUTPUT = "```output"
_CODE_SHARE = 0.35  # first turns that call the tool


def p_correct(version: int) -> float:
    """The chance that a problem is answered correctly at weights ``version`` (0.2, 0.44, 0.61, ...)."""
    return 1.0 - 0.8 * 0.7 ** max(version, 0)


def read_version(weights_path: str | Path, *, missing_ok: bool = True) -> int:
    """The weights version in ``weights_path``'s ``version`` file; 0 when it has none and ``missing_ok``."""
    path = Path(weights_path) / VERSION_FILE
    try:
        text = path.read_text().strip()
    except OSError as error:  # no such file, or weights_path is no directory (e.g. a hub model id)
        if missing_ok:
            return 0
        raise ValueError(f"no weights version at {path}: {error.strerror}") from None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} holds {text[:40]!r}, not an integer version") from None


def load_answers(path: str | Path) -> dict[str, str]:
    """``{prompt: answer}`` from a dataset JSONL of ``{"id", "prompt", "answer"}`` rows."""
    answers: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            raise ValueError(f"{path}:{number}: a row needs 'prompt' and 'answer'")
        answers[str(row["prompt"])] = str(row["answer"])
    return answers


@dataclass(frozen=True)
class Reply:
    """One completion: its text, whether it ends in a tool call, and whether its answer is the right one."""

    text: str
    tool_call: bool
    correct: bool | None  # None: the problem is not in the dataset


class FakeModel:
    """Answers prompts of a known dataset (``answers``: prompt → answer) as a model at some version."""

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = dict(answers or {})
        # longest first, so a prompt that contains a shorter dataset prompt finds its own
        self._by_length = sorted(self.answers, key=len, reverse=True)

    def problem(self, text: str) -> str | None:
        """The dataset prompt ``text`` is about, or None."""
        if text in self.answers:
            return text
        return next((prompt for prompt in self._by_length if prompt and prompt in text), None)

    def reply(self, text: str, *, seed: int, version: int) -> Reply:
        """The answer to the context ``text`` (prompt + earlier turns) at weights ``version``."""
        problem = self.problem(text)
        key = problem if problem is not None else text
        truth = self.answers.get(problem) if problem is not None else None
        correct = _draw(key, seed, "correct") < p_correct(version)
        candidate = truth if truth is not None and correct else _wrong(truth, _draw(key, seed, "wrong"))
        first_turn = TOOL_OUTPUT not in text
        if first_turn and _draw(key, seed, version, "code") < _CODE_SHARE:
            broken = _draw(key, seed, version, "error") < 0.4 * 0.5**version
            code = "print(answer_value)" if broken else f"answer_value = {candidate}\nprint(answer_value)"
            body = f"Let me compute it.\n```python\n{code}\n```"
            return Reply(body, tool_call=True, correct=None if truth is None else correct)
        if _draw(key, seed, version, "format") < 0.15 * 0.5**version:
            final = f"The answer is {candidate}."
        else:
            final = f"So the answer is \\boxed{{{candidate}}}."
        return Reply(f"Working through it step by step. {final}", False, None if truth is None else correct)


def _draw(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _wrong(truth: str | None, u: float) -> str:
    """A plausible wrong integer (or any integer when the truth is unknown)."""
    offset = 1 + int(u * 9)
    try:
        return str(int(truth) + (offset if u < 0.5 else -offset)) if truth is not None else str(int(u * 1000))
    except ValueError:
        return str(int(u * 1000))
