"""An answer's normalized form read as a value: an exact number, a tuple or interval, or plain text.

Numbers are parsed by a small recursive-descent parser (never ``eval``) with hard limits on digits,
exponents, power sizes and nesting, so hostile answers cost nothing.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from orchestrator.tools.grading.normalize import MAX_PARSE_CHARS, clean, encloses, split_top

__all__ = ["Num", "Seq", "Value", "parse_answer"]

_MAX_DIGITS = 1_000  # per numeric literal
_MAX_EXPONENT = 1_000  # |k| in 1e{k}, 10^{k}, a^{k}
_MAX_POWER_BITS = 20_000  # size of a^{k}
_MAX_DEPTH = 20  # nesting of braces, brackets and \frac
_CACHE_CHARS = 256  # answers up to this long are parsed once and cached


class Num(NamedTuple):
    """An exact number; ``places`` marks a possibly rounded decimal reference."""

    value: Fraction
    places: int | None  # decimal places of a plain decimal literal with >= 3 significant digits
    percent: bool


class Seq(NamedTuple):
    """A tuple, interval or bare list, compared element-wise in order."""

    brackets: str  # "()", "[)", ... or "" for a bare comma-separated list
    items: tuple[Value, ...]


Value = Num | Seq | str

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


def _parse_number(text: str) -> Num | None:
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
            return Num(Fraction(digits), None, percent)
        places = len(fraction) if len((whole + fraction).lstrip("0")) >= 3 else None
        return Num(Fraction(digits, 10 ** len(fraction)), places, percent)
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
        return Num(Fraction(-int(top) if negative else int(top), denominator), None, percent)
    value = _Parser(text).parse()
    return None if value is None else Num(value, None, percent)


def _parse_value(text: str, depth: int) -> Value:
    if not text or len(text) > MAX_PARSE_CHARS or depth > _MAX_DEPTH:
        return text
    number = None if "," in text else _parse_number(text)  # thousands commas are gone by now
    if number is not None:
        return number
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and encloses(text):
        items = split_top(text[1:-1])
        if len(items) == 1:
            return _parse_value(items[0], depth + 1) if text[0] + text[-1] == "()" else text
        return Seq(text[0] + text[-1], tuple(_parse_value(item, depth + 1) for item in items))
    if "," in text:
        items = split_top(text)
        if len(items) > 1:
            return Seq("", tuple(_parse_value(item, depth + 1) for item in items))
    return text


def _parse_uncached(text: str) -> tuple[str, Value]:
    stripped = text.strip()
    if _ALREADY_CLEAN.fullmatch(stripped):  # the common forms skip clean, which leaves them as they are
        normalized = stripped.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        number = _parse_number(normalized)
        if number is not None:
            return normalized, number
    normalized = clean(text)
    return normalized, _parse_value(normalized, 0)


_parse_cached = lru_cache(maxsize=1 << 16)(_parse_uncached)


def parse_answer(text: str) -> tuple[str, Value]:
    """``text`` normalized, and that form read as a value (short answers are cached)."""
    return _parse_cached(text) if len(text) <= _CACHE_CHARS else _parse_uncached(text)
