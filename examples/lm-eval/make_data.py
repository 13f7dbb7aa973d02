"""Writes the two example tasks' data (run once; the files are committed): python make_data.py

Arithmetic written for proctor: sums, differences, products and a few divisions with a
fractional answer (a model that truncates gets those wrong, which keeps the metrics honest).
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "tasks"


def questions(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        op = "+-*/"[i % 4] if i % 10 else "/"
        a, b = rng.randint(2, 60), rng.randint(2, 12)
        if op == "/":
            a = b * rng.randint(1, 9) + (b // 2 if i % 10 == 0 else 0)
            value = a / b
            answer = str(int(value)) if value == int(value) else f"{value:g}"
        else:
            answer = str(eval(f"{a} {op} {b}"))
        rows.append({"id": i, "question": f"What is {a} {op} {b}?", "answer": answer})
    return rows


def main() -> None:
    rng = random.Random(11)
    gen = questions(rng, 40)
    (HERE / "arith_gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    mc = []
    for row in questions(rng, 30):
        right = row["answer"]
        base = int(float(right))
        options = sorted({right, str(base), str(base + 1), str(base - 1), str(base + 2)} - {right}, key=int)[:3]
        choices = sorted([right, *options], key=float)
        mc.append({**row, "choices": choices, "gold": choices.index(right)})
    (HERE / "arith_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))


if __name__ == "__main__":
    main()
