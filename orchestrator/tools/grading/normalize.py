"""The canonical string form of an answer: layout, units, assignments and thousands separators removed."""

from __future__ import annotations

import re

from orchestrator.tools.grading.extract import last_boxed

__all__ = ["MAX_PARSE_CHARS", "clean", "encloses", "normalize_answer", "split_top"]

MAX_PARSE_CHARS = 1_000  # longer answers compare as text only

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


def encloses(text: str) -> bool:
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


def split_top(text: str) -> list[str]:
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


def clean(text: str) -> str:
    s = text.strip()
    for _ in range(3):  # a reference may be a whole boxed solution; \boxed{\boxed{5}} unwraps too
        if "\\boxed" not in s and "\\fbox" not in s:
            break
        inner = last_boxed(s)
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
    if len(s) <= MAX_PARSE_CHARS:
        for _ in range(8):
            if len(s) >= 2 and s[0] == "{" and s[-1] == "}" and encloses(s):
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
    return clean(text)
