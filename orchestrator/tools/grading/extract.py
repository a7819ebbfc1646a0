"""Where a response states its final answer: the last ``\\boxed{...}``, else the last "answer is X" line."""

from __future__ import annotations

import re

__all__ = ["extract_final_answer", "last_boxed"]

_MAX_BOX_CHARS = 10_000  # a \boxed{...} whose closing brace is further away than this is not an answer
_MAX_BOX_TRIES = 8  # malformed \boxed occurrences skipped (from the end) before giving up
_MAX_LINE_CHARS = 2_000  # of the rest of an "answer is" line

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ATOM = r"(?:\\.|[^{}\\])"  # an escaped character or anything but a brace
# A {...} group up to 4 levels deep in one C-speed match; each alternative starts with a different
# character, so a failed match backtracks linearly. Deeper groups fall back to a scan.
_BOX_GROUP = re.compile(
    r"\{((?:" + _ATOM + r"|\{(?:" + _ATOM + r"|\{(?:" + _ATOM + r"|\{" + _ATOM + r"*\})*\})*\})*)\}",
    re.DOTALL,
)
_SPACES = re.compile(r"[ \t]*")
_BARE_TOKEN = re.compile(r"[^\s$]{1,200}")
_ANSWER_MARK = re.compile(r"\b[Aa](?:nswer|NSWER)\**[ \t]*(?:(?:is|IS|Is)\b[ \t]*:?|:)")
_ANSWER_WORDS = ("nswer", "NSWER")
_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _escaped(text: str, at: int) -> bool:
    """Whether the character at ``at`` follows an odd run of backslashes (``\\{`` is a literal brace)."""
    run, k = 0, at - 1
    while k >= 0 and text[k] == "\\":
        run, k = run + 1, k - 1
    return run % 2 == 1


def _box_argument(text: str, start: int) -> str | None:
    """The argument of a box command whose name ends at ``start``: ``{...}`` or a bare token."""
    after = _SPACES.match(text, start)
    j = after.end() if after else start
    if j >= len(text):
        return None
    if text[j] == "{":
        quick = _BOX_GROUP.match(text, j, min(len(text), j + 2 + _MAX_BOX_CHARS))
        if quick:
            return quick.group(1).strip()
        depth, k, close = 1, j + 1, -1
        limit = min(len(text), j + 1 + _MAX_BOX_CHARS)
        while True:
            if close < k:
                close = text.find("}", k, limit)
                if close < 0:
                    return None
            opening = text.find("{", k, close)
            if opening >= 0:
                k = opening + 1
                depth += not _escaped(text, opening)
                continue
            k = close + 1
            if not _escaped(text, close):
                depth -= 1
                if depth == 0:
                    return text[j + 1 : close].strip()
    if j > start:  # "\\boxed 5": a space, then one token
        token = _BARE_TOKEN.match(text, j)
        return token.group() if token else None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last well-formed, non-empty box in ``text``."""
    end = len(text)
    for _ in range(_MAX_BOX_TRIES):
        best, name = -1, ""
        for command in _BOX_COMMANDS:
            at = text.rfind(command, 0, end)
            if at > best:
                best, name = at, command
        if best < 0:
            return None
        content = _box_argument(text, best + len(name))
        if content:
            return content
        end = best
    return None


def _answer_line(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" marker, up to the end of its line."""
    # From the end: a case-insensitive regex over the whole text is slow; each word is searched once.
    hits = {word: text.rfind(word) for word in _ANSWER_WORDS}
    while True:
        word = max(hits, key=hits.__getitem__)
        at = hits[word]
        if at < 1:
            return None
        last = _ANSWER_MARK.match(text, at - 1)
        if last:
            break
        hits[word] = text.rfind(word, 0, at)
    start = last.end()
    rest = ""
    for _ in range(3):  # "Answer:" alone on its line: the answer is on the next non-empty one
        stop = text.find("\n", start, start + _MAX_LINE_CHARS)
        stop = stop if stop >= 0 else min(len(text), start + _MAX_LINE_CHARS)
        rest = text[start:stop].strip().strip("*").strip()
        if rest or stop >= len(text):
            break
        start = stop + 1
    for opening, closing in _MATH_SPANS:
        if rest.startswith(opening):
            close = rest.find(closing, len(opening))
            if close > len(opening):
                return rest[len(opening) : close].strip() or None
            break
    sentence_end = rest.find(". ")
    if sentence_end >= 0:
        rest = rest[:sentence_end]
    rest = rest.rstrip(" .*").strip()
    return rest or None


def extract_final_answer(response: str) -> str | None:
    """The last ``\\boxed{...}``'s content, else a trailing "answer is X" / "Answer: X", else None."""
    if not isinstance(response, str):
        return None
    boxed = last_boxed(response)
    return boxed if boxed is not None else _answer_line(response)
