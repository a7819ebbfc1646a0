"""Generate examples/datasets/arith.jsonl: integer-answer arithmetic and algebra problems, seeded.

Each answer is computed by the construction that makes the problem and then checked a second way
(``check``: the expression evaluated from the prompt's text, or the answer substituted back), so a wrong
answer cannot be written. ``python examples/datasets/make_arith.py`` rewrites the file; ``--check FILE``
checks every line of an existing file.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import random
import re
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).with_name("arith.jsonl")
SEED = 14
COUNTS = {"arith": 120, "linear": 80, "system": 50, "quadratic": 30, "modular": 20}
INSTRUCTION = "Give the final answer as an integer in \\boxed{}."

Record = dict[str, str]


def _expression(rng: random.Random, depth: int) -> tuple[str, int]:
    """A random integer expression (+, -, *) and its value, built bottom-up."""
    if depth == 0:
        value = rng.randint(1, 30)
        return str(value), value
    left, lv = _expression(rng, depth - 1 if rng.random() < 0.7 else 0)
    right, rv = _expression(rng, depth - 1 if rng.random() < 0.5 else 0)
    op = rng.choice("+-*")
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op]
    return f"({left} {op} {right})", value


def arith(rng: random.Random) -> tuple[str, int]:
    text, value = _expression(rng, rng.randint(2, 3))
    return f"Compute {text[1:-1]}.", value


def linear(rng: random.Random) -> tuple[str, int]:
    x = rng.randint(-20, 20)
    a, c = rng.sample([n for n in range(-9, 10) if n], 2)  # a != c: exactly one solution
    b = rng.randint(-50, 50)
    d = (a - c) * x + b
    return f"Solve for x: {a}*x + {b} = {c}*x + {d}.", x


def system(rng: random.Random) -> tuple[str, int]:
    x, y = rng.randint(-15, 15), rng.randint(-15, 15)
    while True:
        a1, b1, a2, b2 = (rng.choice([n for n in range(-7, 8) if n]) for _ in range(4))
        if a1 * b2 - a2 * b1:
            break
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    return f"Solve the system {a1}*x + {b1}*y = {c1} and {a2}*x + {b2}*y = {c2}. What is x + y?", x + y


def quadratic(rng: random.Random) -> tuple[str, int]:
    r1, r2 = sorted(rng.sample(range(-12, 13), 2))
    return f"What is the larger root of x^2 + {-(r1 + r2)}*x + {r1 * r2} = 0?", r2


def modular(rng: random.Random) -> tuple[str, int]:
    k, m, n = rng.randint(10, 60), rng.randint(1, 99), rng.randint(3, 97)
    return f"What is the remainder when 2^{k} + {m} is divided by {n}?", (pow(2, k, n) + m) % n


MAKERS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "arith": arith,
    "linear": linear,
    "system": system,
    "quadratic": quadratic,
    "modular": modular,
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(node: ast.AST) -> int:
    """An expression of integers, +, - and * (and unary minus), evaluated from its syntax tree."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"unexpected syntax: {ast.dump(node)}")


def _ints(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"-?\d+", text)]


def check(record: Record) -> bool:
    """The answer checked a second way, from the prompt's text alone."""
    kind, prompt, answer = record["id"].split("-")[0], record["prompt"], int(record["answer"])
    question = prompt.removesuffix(" " + INSTRUCTION)
    if kind == "arith":
        return _evaluate(ast.parse(question.removeprefix("Compute ").rstrip("."), mode="eval").body) == answer
    if kind == "linear":
        a, b, c, d = _ints(question)
        return a != c and a * answer + b == c * answer + d
    if kind == "system":
        a1, b1, c1, a2, b2, c2 = _ints(question.split("?")[0].replace("x + y", ""))
        det = a1 * b2 - a2 * b1
        x, y = Fraction(c1 * b2 - c2 * b1, det), Fraction(a1 * c2 - a2 * c1, det)  # Cramer's rule
        return det != 0 and x + y == answer
    if kind == "quadratic":
        _, p, q, _ = _ints(question)  # x^2 + p*x + q = 0
        other = -p - answer  # the roots sum to -p
        return answer * answer + p * answer + q == 0 and other * answer == q and other < answer
    if kind == "modular":
        _, k, m, n = _ints(question)
        return (2**k + m) % n == answer
    return False


def generate(seed: int = SEED) -> list[Record]:
    """Every problem, in a fixed order; each answer checked before it is written."""
    rng = random.Random(seed)
    records = []
    for kind, count in COUNTS.items():
        for index in range(1, count + 1):
            question, answer = MAKERS[kind](rng)
            record = {
                "id": f"{kind}-{index:04d}",
                "prompt": f"{question} {INSTRUCTION}",
                "answer": str(answer),
            }
            if not check(record):
                raise AssertionError(f"{record['id']}: the answer {answer} fails its check")
            records.append(record)
    return records


def dumps(records: list[Record]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", type=Path, help="check every answer of an existing file instead")
    args = parser.parse_args(argv)
    if args.check is not None:
        bad = [r["id"] for r in map(json.loads, args.check.read_text().splitlines()) if not check(r)]
        print(f"{len(bad)} wrong answers" + (f": {', '.join(bad)}" if bad else ""))
        return 1 if bad else 0
    records = generate(args.seed)
    args.out.write_text(dumps(records), encoding="utf-8")
    print(f"wrote {len(records)} problems to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
