"""Reward checks for math RL: did the model's final answer match the reference?

Pure standard library (``re``, ``fractions``), deterministic, never ``eval``: answers are parsed by a small
recursive-descent parser with hard limits on length, digits, exponents and nesting, and every regular
expression is linear, so hostile responses (100 KB of ``{``, ``10^{10^{10}}``, 10,000 nines) return fast.

The final answer is the content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces
fine; ``\\boxed 5`` works too), else the rest of the last "answer is X" / "Answer: X" line (``answer``,
``Answer`` or ``ANSWER``; a leading ``$...$`` span is taken whole, otherwise up to the first ". "), else
none. A reference holding ``\\boxed`` (a whole worked solution) is reduced to its last box the same way.

Both sides are normalized (``normalize_answer``), then parsed into a number, a tuple/interval or plain text:

==========================  =========================================================================
rule                        examples that check equal
==========================  =========================================================================
numbers by exact value      ``1,000`` = ``1000`` = ``+1000`` = ``001000`` = ``1 000`` = ``1e3``
                            = ``1\\times10^{3}`` = ``10^3``; ``2^{10}`` = ``2^10`` = ``1024``
negatives                   ``-5`` = ``−5`` (U+2212) = ``- 5``
fractions                   ``3/4`` = ``\\frac{3}{4}`` = ``\\dfrac34`` = ``\\tfrac{3}{4}`` = ``0.75``;
                            ``-\\frac{1}{2}`` = ``\\frac{-1}{2}`` = ``-1/2`` = ``-0.5``
rounded reference decimal   reference ``0.333`` accepts ``1/3`` and ``0.3334`` (see below)
percent                     ``50\\%`` = ``50``; reference ``50\\%`` also accepts ``0.5`` (see below)
layout stripped             ``$...$``, ``\\(...\\)``, ``\\left``/``\\right``, ``\\!`` ``\\,`` ``\\;`` ``\\ ``
                            ``\\quad``, ``\\displaystyle``, outer ``{}``, trailing periods, ``\\$``,
                            spaces (not between two digits: ``2 1/2`` is not ``21/2``)
units stripped              one trailing ``\\text{ cm}`` / ``\\mbox`` / ``\\mathrm`` (letters only,
                            optional ``^2``): ``5 \\text{ cm}`` = ``5``; ``30^\\circ`` = ``30``
assignment                  ``x = 5`` = ``5`` (a single letter, optionally subscripted, or a Greek
                            letter on the left of the only ``=``)
tuples / intervals          ``(1, 2)`` = ``\\left( 1,2 \\right)``; element-wise, in order, the same
                            brackets (``(1, 2]`` != ``(1, 2)``); bare lists ``1, 2`` only match bare lists
text                        ``\\text{Yes}`` = ``yes`` (letters-only words compare case-insensitively);
                            ``\\sqrt 2`` = ``\\sqrt{2}``; anything else by normalized string
==========================  =========================================================================

Rounding rule (strict): only a *reference* written as a plain decimal literal with at least 3 significant
digits (``0.333``, ``1.50``, ``12.5``) is taken as possibly rounded; an answer matches it when the answer's
exact value rounded half away from zero to the reference's decimal places equals it. A rounded *answer*
never matches an exact reference (answer ``0.333`` vs reference ``1/3`` is different).

Percent rule: a trailing percent sign is a label and is dropped (``50\\%`` = ``50`` both ways); when the
*reference* carries it, value / 100 is accepted as well (reference ``50\\%`` accepts ``0.5``, ``1/2``).
An answer's percent sign never divides (answer ``50\\%`` vs reference ``0.5`` is different).

Thousands: a whole answer ``1,000`` or ``1 000`` is one number; inside brackets commas always separate
(``(10,100)`` is a pair). Mixed numbers (``2\\frac{1}{2}``, ``2 1/2``), ``\\sqrt`` arithmetic, sets as
unordered collections, plain-word units (``5 cm``) and symbolic algebra are not supported: they compare
as normalized text. Limits: answers over 1,000 characters, literals over 1,000 digits, exponents over 1,000
and powers over 20,000 bits are not evaluated (text comparison only), so ``10^{10^{10}}`` costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, NamedTuple

__all__ = [
    "REASONS",
    "AnswerCheck",
    "check_answer",
    "check_answers",
    "extract_final_answer",
    "normalize_answer",
]

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

_MAX_BOX_CHARS = 10_000  # a \boxed{...} whose closing brace is further away than this is not an answer
_MAX_BOX_TRIES = 8  # malformed \boxed occurrences skipped (from the end) before giving up
_MAX_LINE_CHARS = 2_000  # of the rest of an "answer is" line
_MAX_PARSE_CHARS = 1_000  # longer answers compare as text only
_MAX_DIGITS = 1_000  # per numeric literal
_MAX_EXPONENT = 1_000  # |k| in 1e{k}, 10^{k}, a^{k}
_MAX_POWER_BITS = 20_000  # size of a^{k}
_MAX_DEPTH = 20  # nesting of braces, brackets and \frac
_CACHE_CHARS = 256  # answers up to this long are parsed once and cached


@dataclass(frozen=True)
class AnswerCheck:
    """The outcome of one check; ``reason`` is one of ``REASONS``."""

    correct: bool
    extracted: str | None  # the final answer found in the response (None: none found)
    reason: str


class _Num(NamedTuple):
    value: Fraction
    places: int | None  # decimal places of a plain decimal literal with >= 3 significant digits
    percent: bool


class _Seq(NamedTuple):
    brackets: str  # "()", "[)", ... or "" for a bare comma-separated list
    items: tuple[_Value, ...]


_Value = _Num | _Seq | str

# ---------------------------------------------------------------------------------------------- extraction

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


def _last_boxed(text: str) -> str | None:
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
    boxed = _last_boxed(response)
    return boxed if boxed is not None else _answer_line(response)


# ------------------------------------------------------------------------------------------- normalization

_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\ufe63": "-",
        "\uff0d": "-",
        "\u00b0": "",  # degree sign
        "\u221e": "\\infty ",
        "\u03c0": "\\pi ",
        "\u00d7": "\\times ",
        "\u22c5": "\\cdot ",
        "\u00a0": " ",
    }
)
# math delimiters \( \) \[ \], sizing (\left, \right, \bigl...), spacing (\, \! \; \quad ~) and \\
_LAYOUT = re.compile(
    r"\\\\|\\[()\[\],;:! ]|\\(?:left|right)(?:\.|(?![A-Za-z]))|\\[bB]igg?[lr]?(?![A-Za-z])"
    r"|\\(?:q?quad|displaystyle|textstyle)(?![A-Za-z])|~"
)
_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![A-Za-z]))|\\degree(?![A-Za-z])")
_TEXT_COMMAND = r"\\(?:text|textrm|textbf|textit|textnormal|mathrm|mbox|operatorname)\s*"
_TEXT = re.compile(_TEXT_COMMAND + r"\{([^{}]*)\}")
_TEXT_NAMES = ("\\text", "\\math", "\\mbox", "\\operatorname")
_UNIT = re.compile(
    r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z\s./]*\}(?:\s*\^\s*(?:[0-9]|\{\s*[0-9]\s*\}))?\s*$"
)
_GREEK = "alpha|beta|gamma|delta|epsilon|theta|lambda|mu|phi|varphi|psi|omega|sigma|tau|rho"
_ASSIGNMENT = re.compile(r"\s*(?:[A-Za-z](?:_\{?[A-Za-z0-9]{1,8}\}?)?|\\(?:" + _GREEK + r"))\s*=(?![=<>])")
_THOUSANDS_COMMA = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?%?")
_THOUSANDS_SPACE = re.compile(r"[+-]?[0-9]{1,3}(?: [0-9]{3})+(?:\.[0-9]+)?%?")
_ANY_SPACE = re.compile(r"\s")
_DIGIT_SPACE = re.compile(r"[0-9]\s+[0-9]")
# A space after a command name before a letter separates them ("\pi r"); one between digits ("2 1/2")
# blocks reading them as one number; every other space goes.
_SPACE_RUN = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|(?<=[0-9])(\s+)(?=[0-9])|\s+")
_TOKEN = r"(?:\\[A-Za-z]+|[^{}\\\s])"
_GROUP = r"\{[^{}]*\}"
_FRAC_SHORT = re.compile(  # \frac34, \frac3{4}, \frac{3}4 (not \frac{3}{4}, which is left alone)
    rf"\\frac\s?({_TOKEN})\s?({_TOKEN}|{_GROUP})|\\frac\s?({_GROUP})\s?({_TOKEN})"
)
_SQRT_SHORT = re.compile(r"\\sqrt\s?(" + _TOKEN + r")")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")


def _space_replacement(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + " "
    return " " if match.group(2) else ""


def _first_group(match: re.Match[str]) -> str:
    return match.group(1)


def _frac_replacement(match: re.Match[str]) -> str:
    top, bottom = match.group(1) or match.group(3), match.group(2) or match.group(4)
    top = top[1:-1] if top.startswith("{") else top
    bottom = bottom[1:-1] if bottom.startswith("{") else bottom
    return "\\frac{" + top + "}{" + bottom + "}"


def _encloses(text: str) -> bool:
    """Whether ``text``'s first bracket is closed by its last character (any of ()[]{} count)."""
    depth, last = 0, len(text) - 1
    for k, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth <= 0 and k != last:
                return False
    return depth == 0


def _split_top(text: str) -> list[str]:
    """``text`` split on the commas outside every bracket."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


def _clean(text: str) -> str:
    s = text.strip()
    for _ in range(3):  # a reference may be a whole boxed solution; \boxed{\boxed{5}} unwraps too
        if "\\boxed" not in s and "\\fbox" not in s:
            break
        inner = _last_boxed(s)
        if inner is None or inner == s:
            break
        s = inner
    if not s.isascii():
        s = s.translate(_UNICODE)
    if "$" in s:
        s = s.replace("\\$", "").replace("$", "")
    if "\\" in s:
        s = _LAYOUT.sub("", s)
        s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%")
        if "circ" in s or "degree" in s:
            s = _DEGREES.sub("", s)
        s = s.strip()
        if any(command in s for command in _TEXT_NAMES):
            whole = _TEXT.fullmatch(s)
            if whole:
                s = whole.group(1).strip()
            unit = _UNIT.search(s)
            if unit and unit.start() > 0:
                s = s[: unit.start()].strip()
            s = _TEXT.sub(_first_group, s)
    elif "~" in s:
        s = s.replace("~", "")
    if "{,}" in s:
        s = s.replace("{,}", ",")
    s = s.strip().rstrip(".").strip()
    if s.endswith("\\") and not s.endswith("\\\\"):  # "5\ " lost its space to a strip
        s = s[:-1].rstrip()
    if len(s) <= _MAX_PARSE_CHARS:
        for _ in range(8):
            if len(s) >= 2 and s[0] == "{" and s[-1] == "}" and _encloses(s):
                s = s[1:-1].strip()
            else:
                break
        if "=" in s:
            left = _ASSIGNMENT.match(s)
            if left and "=" not in s[left.end() :] and s[left.end() :].strip():
                s = s[left.end() :].strip()
        if "," in s and _THOUSANDS_COMMA.fullmatch(s):
            s = s.replace(",", "")
        elif " " in s and _THOUSANDS_SPACE.fullmatch(s):
            s = s.replace(" ", "")
    if _ANY_SPACE.search(s):
        if "\\" in s or _DIGIT_SPACE.search(s):
            s = _SPACE_RUN.sub(_space_replacement, s)
        else:
            s = "".join(s.split())
    if "\\frac" in s:
        s = _FRAC_SHORT.sub(_frac_replacement, s)
    if "\\sqrt" in s:
        s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if _WORD.fullmatch(s):
        s = s.lower()
    return s


def normalize_answer(text: str) -> str:
    """The canonical string form of an answer (numbers are then compared by value, not by this string)."""
    if not isinstance(text, str):
        return ""
    return _clean(text)


# ------------------------------------------------------------------------------------------------- parsing

_PLAIN_DECIMAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_LITERAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]{1,5}))?")
_SIMPLE_FRACTION = re.compile(  # 3/4, -3/4, \frac{3}{4}, -\frac{-3}{4}: the common forms, without the parser
    r"([+-]?)([0-9]{1,1000})/([+-]?)([0-9]{1,1000})"
    r"|([+-]?)\\frac\{([+-]?)([0-9]{1,1000})\}\{([+-]?)([0-9]{1,1000})\}"
)
_ALREADY_CLEAN = re.compile(
    r"[+-]?[0-9]{1,30}(?:\.[0-9]{1,30})?|[+-]?[0-9]{1,30}/[0-9]{1,30}"
    r"|[+-]?\\[dt]?frac\{[+-]?[0-9]{1,30}\}\{[0-9]{1,30}\}"
)
_INTEGER = re.compile(r"[+-]?[0-9]{1,5}")
_TIMES_TEN = ("\\times10^", "\\cdot10^", "*10^")


_Ratio = tuple[int, int]  # (numerator, denominator > 0), not reduced: Fraction arithmetic is slow


def _pow(base: _Ratio, exponent: int) -> _Ratio | None:
    top, bottom = base
    if top == 0 and exponent <= 0:
        return None
    if max(top.bit_length(), bottom.bit_length()) * abs(exponent) > _MAX_POWER_BITS:
        return None
    if exponent < 0:
        top, bottom, exponent = (bottom, top, -exponent) if top > 0 else (-bottom, -top, -exponent)
    return top**exponent, bottom**exponent


class _Parser:
    """Exact value of a numeric expression: literals, one ``/``, ``\\frac``, ``^``, ``{}``/``()`` groups."""

    __slots__ = ("i", "n", "s")

    def __init__(self, text: str) -> None:
        self.s, self.i, self.n = text, 0, len(text)

    def parse(self) -> Fraction | None:
        value = self._expr(0)
        if value is None or self.i != self.n:
            return None
        return Fraction(*value)

    def _at(self, ch: str) -> bool:
        return self.i < self.n and self.s[self.i] == ch

    def _expr(self, depth: int) -> _Ratio | None:
        if depth > _MAX_DEPTH:
            return None
        value = self._signed(depth)
        if value is not None and self._at("/"):
            self.i += 1
            divisor = self._signed(depth)
            value = None if divisor is None else _divide(value, divisor)
        return value

    def _signed(self, depth: int) -> _Ratio | None:
        negative = False
        if self.i < self.n and self.s[self.i] in "+-":
            negative = self.s[self.i] == "-"
            self.i += 1
        value = self._power(depth)
        if value is None or not negative:
            return value
        return -value[0], value[1]

    def _power(self, depth: int) -> _Ratio | None:
        value = self._atom(depth)
        if value is None or not self._at("^"):
            return value
        self.i += 1
        exponent = self._exponent()
        return None if exponent is None else _pow(value, exponent)

    def _exponent(self) -> int | None:
        braced = self._at("{")
        if braced:
            self.i += 1
        match = _INTEGER.match(self.s, self.i)
        if not match:
            return None
        self.i = match.end()
        if braced:
            if not self._at("}"):
                return None
            self.i += 1
        exponent = int(match.group())
        return exponent if abs(exponent) <= _MAX_EXPONENT else None

    def _atom(self, depth: int) -> _Ratio | None:
        if self.i >= self.n:
            return None
        ch = self.s[self.i]
        if "0" <= ch <= "9" or ch == ".":
            return self._literal()
        if ch in "{(":
            self.i += 1
            value = self._expr(depth + 1)
            if value is None or not self._at("}" if ch == "{" else ")"):
                return None
            self.i += 1
            return value
        if self.s.startswith("\\frac{", self.i):
            self.i += 5
            top = self._group(depth + 1)
            bottom = self._group(depth + 1) if top is not None else None
            return None if top is None or bottom is None else _divide(top, bottom)
        return None

    def _group(self, depth: int) -> _Ratio | None:
        if not self._at("{"):
            return None
        self.i += 1
        value = self._expr(depth)
        if value is None or not self._at("}"):
            return None
        self.i += 1
        return value

    def _literal(self) -> _Ratio | None:
        match = _LITERAL.match(self.s, self.i)
        if match is None:  # pragma: no cover - the pattern matches the empty string
            return None
        whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3)
        if (not whole and not fraction) or len(whole) + len(fraction) > _MAX_DIGITS:
            return None
        self.i = match.end()
        shift = -len(fraction)
        if exponent is not None:
            shift += int(exponent)
        for prefix in _TIMES_TEN:
            if self.s.startswith(prefix, self.i):
                self.i += len(prefix)
                extra = self._exponent()
                if extra is None:
                    return None
                shift += extra
                break
        if abs(shift) > _MAX_EXPONENT + _MAX_DIGITS:
            return None
        digits = int(whole + fraction)
        return (digits * 10**shift, 1) if shift >= 0 else (digits, 10**-shift)


def _divide(top: _Ratio, bottom: _Ratio) -> _Ratio | None:
    if bottom[0] == 0:
        return None
    numerator, denominator = top[0] * bottom[1], top[1] * bottom[0]
    return (numerator, denominator) if denominator > 0 else (-numerator, -denominator)


def _parse_number(text: str) -> _Num | None:
    percent = text.endswith("%")
    if percent:
        text = text[:-1]
    plain = _PLAIN_DECIMAL.fullmatch(text)
    if plain:
        sign, whole, fraction = plain.group(1), plain.group(2), plain.group(3) or ""
        if (not whole and not fraction) or len(whole) + len(fraction) > _MAX_DIGITS:
            return None
        digits = int(sign + whole + fraction)
        if not fraction:
            return _Num(Fraction(digits), None, percent)
        places = len(fraction) if len((whole + fraction).lstrip("0")) >= 3 else None
        return _Num(Fraction(digits, 10 ** len(fraction)), places, percent)
    simple = _SIMPLE_FRACTION.fullmatch(text)
    if simple:
        if simple.group(2) is not None:
            sign, top_sign, top, bottom_sign, bottom = simple.group(1), "", *simple.group(2, 3, 4)
        else:
            sign, top_sign, top, bottom_sign, bottom = simple.group(5, 6, 7, 8, 9)
        denominator = int(bottom)
        if denominator == 0:
            return None
        negative = (sign == "-") ^ (top_sign == "-") ^ (bottom_sign == "-")
        return _Num(Fraction(-int(top) if negative else int(top), denominator), None, percent)
    value = _Parser(text).parse()
    return None if value is None else _Num(value, None, percent)


def _parse_value(text: str, depth: int) -> _Value:
    if not text or len(text) > _MAX_PARSE_CHARS or depth > _MAX_DEPTH:
        return text
    number = None if "," in text else _parse_number(text)  # thousands commas are gone by now
    if number is not None:
        return number
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _encloses(text):
        items = _split_top(text[1:-1])
        if len(items) == 1:
            return _parse_value(items[0], depth + 1) if text[0] + text[-1] == "()" else text
        return _Seq(text[0] + text[-1], tuple(_parse_value(item, depth + 1) for item in items))
    if "," in text:
        items = _split_top(text)
        if len(items) > 1:
            return _Seq("", tuple(_parse_value(item, depth + 1) for item in items))
    return text


def _parse_uncached(text: str) -> tuple[str, _Value]:
    stripped = text.strip()
    if _ALREADY_CLEAN.fullmatch(stripped):  # the common forms skip _clean, which leaves them as they are
        normalized = stripped.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        number = _parse_number(normalized)
        if number is not None:
            return normalized, number
    normalized = _clean(text)
    return normalized, _parse_value(normalized, 0)


_parse_cached = lru_cache(maxsize=1 << 16)(_parse_uncached)


def _parse(text: str) -> tuple[str, _Value]:
    return _parse_cached(text) if len(text) <= _CACHE_CHARS else _parse_uncached(text)


# ---------------------------------------------------------------------------------------------- comparison


def _rounds_to(value: Fraction, target: Fraction, places: int) -> bool:
    """Whether ``value`` rounded half away from zero to ``places`` decimals equals ``target``."""
    scale = 10**places
    numerator, denominator = value.numerator * scale, value.denominator
    rounded = (2 * abs(numerator) + denominator) // (2 * denominator)
    return Fraction(rounded if numerator >= 0 else -rounded, scale) == target


def _same_number(reference: _Num, answer: _Num) -> bool:
    readings = [(reference.value, reference.places)]
    if reference.percent:
        places = None if reference.places is None else reference.places + 2
        readings.append((reference.value / 100, places))
    for value, places in readings:
        if answer.value == value or (places is not None and _rounds_to(answer.value, value, places)):
            return True
    return False


def _same(reference: _Value, answer: _Value) -> bool:
    if isinstance(reference, _Num):
        return isinstance(answer, _Num) and _same_number(reference, answer)
    if isinstance(reference, _Seq):
        return (
            isinstance(answer, _Seq)
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
    reference_text, reference_value = _parse(_as_text(reference))
    if not reference_text:
        return AnswerCheck(False, extracted, "empty reference")
    if extracted is None:
        return AnswerCheck(False, None, "no answer")
    answer_text, answer_value = _parse(extracted)
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
