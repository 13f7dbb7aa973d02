"""What the dashboard reads from one run directory: the ledger's figures and samples, paged in SQL.

The dashboard never loads a whole run into Python: the counts, accuracy (with the same Wilson CI
the reports use), per-category accuracy and errors by class are aggregate queries, and the
samples table is one ``LIMIT/OFFSET`` query with its filters in ``WHERE``, so a job of 10,000
samples opens as fast as one of ten. The connection is read-only: a viewer must never change a
run, even one whose engine is still writing (WAL lets both go on at once).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.evals.reports import wilson_interval

PAGE_SIZE = 50
"""Samples per page of the samples table."""

RATE_WINDOW_S = 60.0
"""The ETA of a run without an engine progress line: samples finished in this last window."""

_FROM = " FROM samples s LEFT JOIN generations g ON g.id = s.id LEFT JOIN scores c ON c.id = s.id"


@dataclass(frozen=True)
class SampleFilter:
    """The samples table's filters (each one optional); ``q`` searches input, target and output."""

    state: str | None = None
    score: str | None = None
    """``correct`` (score 1), ``wrong`` (score below 1) or ``none`` (not scored)."""
    category: str | None = None
    error_class: str | None = None
    q: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.state:
            clauses.append("s.state = ?")
            params.append(self.state)
        if self.score == "correct":
            clauses.append("c.value >= 1")
        elif self.score == "wrong":
            clauses.append("c.value < 1")
        elif self.score == "none":
            clauses.append("c.value IS NULL")
        if self.category:
            clauses.append("s.category = ?")
            params.append(self.category)
        if self.error_class:
            clauses.append("s.error_class = ?")
            params.append(self.error_class)
        if self.q:
            like = "%" + self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(
                "(s.id LIKE ? ESCAPE '\\' OR s.input LIKE ? ESCAPE '\\' OR s.target LIKE ? ESCAPE '\\'"
                " OR g.output LIKE ? ESCAPE '\\')"
            )
            params.extend([like] * 4)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def _accuracy(total: float, n: int) -> dict[str, Any]:
    return {
        "value": round(total / n, 4) if n else None,
        "correct": round(total, 4),
        "denominator": n,
        "ci95": wilson_interval(total, n),
    }


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class RunData:
    """Read-only queries on one run directory's ``ledger.sqlite`` (absent while a job is queued)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ledger = run_dir / "ledger.sqlite"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection | None]:
        if not self.ledger.is_file():
            yield None
            return
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # a ledger being created: nothing to show yet
                raise
        finally:
            conn.close()

    def summary(self, *, now: float | None = None) -> dict[str, Any]:
        """Counts, accuracy with its CI, per category, errors by class, and a rate-based ETA."""
        out: dict[str, Any] = {
            "counts": {"total": 0, "pending": 0, "running": 0, "generated": 0, "scored": 0, "error": 0},
            "done": 0,
            "accuracy": _accuracy(0, 0),
            "by_category": {},
            "errors_by_class": {},
            "eta_s": None,
        }
        with self._db() as db:
            if db is None:
                return out
            for state, n in db.execute("SELECT state, COUNT(*) FROM samples GROUP BY state"):
                out["counts"][state] = n
            out["counts"]["total"] = sum(out["counts"].values())
            row = db.execute(
                "SELECT COALESCE(SUM(c.value), 0), COUNT(*)" + _FROM + " WHERE s.state='scored'"
            ).fetchone()
            out["accuracy"] = _accuracy(float(row[0]), int(row[1]))
            out["by_category"] = {
                cat: _accuracy(float(total), int(n))
                for cat, total, n in db.execute(
                    "SELECT s.category, COALESCE(SUM(c.value), 0), COUNT(*)"
                    + _FROM
                    + " WHERE s.state='scored' AND s.category IS NOT NULL GROUP BY s.category ORDER BY s.category"
                )
            }
            out["errors_by_class"] = dict(
                db.execute(
                    "SELECT COALESCE(error_class, 'unknown'), COUNT(*) FROM samples WHERE state='error'"
                    " GROUP BY 1 ORDER BY 2 DESC"
                ).fetchall()
            )
            counts = out["counts"]
            out["done"] = counts["scored"] + counts["error"]
            remaining = counts["total"] - out["done"]
            moment = time.time() if now is None else now
            recent = db.execute(
                "SELECT COUNT(*) FROM samples WHERE finished >= ? AND state IN ('scored', 'error')",
                (moment - RATE_WINDOW_S,),
            ).fetchone()[0]
            if remaining and recent:
                out["eta_s"] = round(remaining / (recent / RATE_WINDOW_S), 1)
        return out

    def facets(self) -> dict[str, list[str]]:
        """The values the samples table's filters offer."""
        with self._db() as db:
            if db is None:
                return {"categories": [], "error_classes": []}
            cats = [r[0] for r in db.execute("SELECT DISTINCT category FROM samples WHERE category IS NOT NULL")]
            errs = [r[0] for r in db.execute("SELECT DISTINCT error_class FROM samples WHERE error_class IS NOT NULL")]
        return {"categories": sorted(cats), "error_classes": sorted(errs)}

    def samples(self, flt: SampleFilter, *, page: int, size: int = PAGE_SIZE) -> dict[str, Any]:
        """One page of the filtered samples (no trajectories: those open one at a time)."""
        where, params = flt.where()
        rows: list[dict[str, Any]] = []
        matched = 0
        with self._db() as db:
            if db is not None:
                matched = db.execute("SELECT COUNT(*)" + _FROM + where, params).fetchone()[0]
                cur = db.execute(
                    "SELECT s.id, s.state, s.category, s.error_class, s.input, s.target,"
                    " substr(g.output, 1, 300), c.value, g.duration, g.model_calls"
                    + _FROM
                    + where
                    + " ORDER BY s.idx LIMIT ? OFFSET ?",
                    [*params, size, (page - 1) * size],
                )
                for r in cur:
                    rows.append(
                        {
                            "id": r[0],
                            "state": r[1],
                            "category": r[2],
                            "error_class": r[3],
                            "input": _short(_loads(r[4])),
                            "target": _loads(r[5]),
                            "output": r[6],
                            "score": r[7],
                            "duration": r[8],
                            "model_calls": r[9],
                        }
                    )
        pages = max(1, -(-matched // size))
        return {"page": page, "pages": pages, "page_size": size, "matched": matched, "samples": rows}

    def sample(self, sample_id: str) -> dict[str, Any] | None:
        """One sample whole: its trajectory (messages, tool calls and results, per-turn timing), score, verdict."""
        with self._db() as db:
            if db is None:
                return None
            r = db.execute(
                "SELECT s.id, s.state, s.category, s.error_class, s.error, s.input, s.target, s.choices, s.started,"
                " s.finished, s.dispatches, g.output, g.messages, g.tokens_in, g.tokens_out, g.model_calls,"
                " g.outcome, g.duration, g.extra, c.value, c.answer, c.explanation, c.scorer, c.extra"
                + _FROM
                + " WHERE s.id = ?",
                (sample_id,),
            ).fetchone()
        if r is None:
            return None
        gen_extra = _loads(r[18]) or {}
        score_extra = _loads(r[23]) or {}
        return {
            "id": r[0],
            "state": r[1],
            "category": r[2],
            "error": {"class": r[3], "message": r[4]} if r[1] == "error" else None,
            "input": _loads(r[5]),
            "target": _loads(r[6]),
            "choices": _loads(r[7]),
            "started": r[8],
            "finished": r[9],
            "dispatches": r[10],
            "output": r[11],
            "messages": _loads(r[12]) or [],
            "tokens_in": r[13],
            "tokens_out": r[14],
            "model_calls": r[15],
            "outcome": r[16],
            "duration": r[17],
            "turns": gen_extra.get("turns") or [] if isinstance(gen_extra, dict) else [],
            "score": r[19],
            "answer": r[20],
            "explanation": r[21],
            "scorer": r[22],
            "judge": _judge(score_extra),
        }


def _short(value: Any, limit: int = 300) -> str:
    """A table cell's text: strings as they are, anything else (chat messages) as JSON, cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _judge(extra: Any) -> dict[str, Any] | None:
    """The judge's verdict and raw reply, when a judge scored the sample."""
    if not isinstance(extra, dict) or "judge_raw" not in extra:
        return None
    keys = ("judge_raw", "judge_model", "judge_role", "verdict_rule", "shortcut")
    return {k.removeprefix("judge_"): extra.get(k) for k in keys if extra.get(k) is not None}
