"""Jinja2 templates (shipped in the package) and the small formatting filters they use."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


def percent(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def seconds(value: Any) -> str:
    """12 ms, 3.2 s, 4 min 10 s, 2 h 05 min: an ETA or a duration a person reads at a glance."""
    if value is None:
        return "–"
    s = float(value)
    if s < 1:
        return f"{1000 * s:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def timestamp(value: Any) -> str:
    if value is None:
        return "–"
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Templates:
    """The dashboard's templates, autoescaped (sample texts are untrusted model output)."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(percent=percent, seconds=seconds, timestamp=timestamp, pretty=pretty, number=number)

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)
