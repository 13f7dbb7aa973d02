"""Write frames-mini's corpus and questions (run once; both files are committed).

frames-mini is a small FRAMES-style benchmark written for proctor: a fictional world (so no model
knows the answers by heart) of towns, founders, provinces, rivers and guilds, described in short
documents, and questions that need two or three of them ("In what year was the founder of
Kestrel Hollow born?" needs the town's document, then its founder's). Deterministic: the same
seed writes the same files.

    python examples/frames-mini/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYLLABLES = "ka lo mir ven dra sel tho ran bel quin zor fa ly ost tem gar hal ned or vis pel ur san dro ke".split()
JOBS = ["cartographer", "stonemason", "weaver", "shipwright", "astronomer", "brewer", "physician", "glassblower"]
SEAS = ["the Amber Sea", "the Grey Gulf", "the Northern Reach", "the Tessel Sound"]


def name(rng: random.Random, used: set[str], parts: int = 2) -> str:
    for _ in range(10_000):
        word = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
        if word not in used and len(word) > 3:
            used.add(word)
            return word
    raise RuntimeError("ran out of names: add syllables")


def main() -> None:
    rng = random.Random(20260131)
    used: set[str] = set()
    docs: list[dict[str, str]] = []
    provinces = [{"name": name(rng, used, 3)} for _ in range(40)]
    rivers = [{"name": name(rng, used), "km": rng.randint(40, 900), "sea": rng.choice(SEAS)} for _ in range(40)]
    people = [{"first": name(rng, used), "last": name(rng, used), "born": rng.randint(1520, 1790), "job": rng.choice(JOBS)}
              for _ in range(150)]
    towns = []
    for i in range(150):
        town = {"name": name(rng, used) + rng.choice([" Hollow", " Ford", "wick", " Cross", "holm", " Bay"]),
                "province": provinces[i % 40], "founder": people[i], "founded": people[i]["born"] + rng.randint(20, 55),
                "population": rng.randint(300, 90_000)}
        towns.append(town)
    for i, province in enumerate(provinces):
        province["capital"] = towns[i]
        province["river"] = rivers[i]
    for i, person in enumerate(people):
        person["birthplace"] = towns[(i * 7 + 3) % 150]
    guilds = [{"name": f"Guild of {name(rng, used)}", "town": towns[rng.randrange(150)], "year": rng.randint(1600, 1850),
               "trade": rng.choice(JOBS)} for _ in range(120)]

    for t in towns:
        docs.append({"id": f"town-{len(docs)}", "title": t["name"],
                     "content": f"{t['name']} is a town in the province of {t['province']['name']}. It was founded in "
                                f"{t['founded']} by {t['founder']['first']} {t['founder']['last']}, and today about "
                                f"{t['population']:,} people live there."})
    for p in people:
        docs.append({"id": f"person-{len(docs)}", "title": f"{p['first']} {p['last']}",
                     "content": f"{p['first']} {p['last']} was a {p['job']} born in {p['born']} in {p['birthplace']['name']}. "
                                f"{p['first']} {p['last']} is remembered for founding a town."})
    for p in provinces:
        docs.append({"id": f"province-{len(docs)}", "title": f"Province of {p['name']}",
                     "content": f"The province of {p['name']} has its capital at {p['capital']['name']}. The main river of "
                                f"{p['name']} is the {p['river']['name']}."})
    for r in rivers:
        docs.append({"id": f"river-{len(docs)}", "title": f"{r['name']} (river)",
                     "content": f"The {r['name']} is a river {r['km']} kilometres long that flows into {r['sea']}."})
    for g in guilds:
        docs.append({"id": f"guild-{len(docs)}", "title": g["name"],
                     "content": f"The {g['name']} is a guild of {g['trade']}s founded in {g['year']} "
                                f"in the town of {g['town']['name']}."})

    questions: list[dict[str, str]] = []
    for i, t in enumerate(towns[:25]):
        questions.append({"id": f"fm-{len(questions) + 1:03d}", "question": f"In what year was the founder of {t['name']} born?",
                          "answer": str(t["founder"]["born"]), "hops": "town -> founder"})
        p = towns[25 + i]["province"]
        questions.append({"id": f"fm-{len(questions) + 1:03d}",
                          "question": f"How long, in kilometres, is the main river of the province that {towns[25 + i]['name']} is in?",
                          "answer": str(p["river"]["km"]), "hops": "town -> province -> river"})
    for p in provinces[:10]:
        questions.append({"id": f"fm-{len(questions) + 1:03d}", "question": f"In what year was the capital of the province of {p['name']} founded?",
                          "answer": str(p["capital"]["founded"]), "hops": "province -> capital town"})
    with (HERE / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    with (HERE / "data.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in questions)
    print(f"wrote {len(docs)} documents and {len(questions)} questions")


if __name__ == "__main__":
    main()
