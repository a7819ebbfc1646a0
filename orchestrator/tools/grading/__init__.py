"""Answer grading (the reward of math RL): did the model's final answer match the reference?

``extract`` finds the final answer, ``normalize`` writes both sides in one canonical form, ``values`` reads
that form as a number, tuple or text, and ``check`` compares the two and says why.

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

from orchestrator.tools.grading.check import REASONS, AnswerCheck, check_answer, check_answers
from orchestrator.tools.grading.extract import extract_final_answer
from orchestrator.tools.grading.normalize import normalize_answer

__all__ = [
    "REASONS",
    "AnswerCheck",
    "check_answer",
    "check_answers",
    "extract_final_answer",
    "normalize_answer",
]
