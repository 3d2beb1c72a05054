"""How docker prints things, for every table buildpy prints (images, ps, history, tree):
tabwriter columns, decimal sizes ("1.13MB"), human durations ("2 years ago"), RFC 3339 times."""

from __future__ import annotations

import re
from datetime import datetime


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns as docker's tabwriter sets them: at least 10 wide, 3 spaces of padding, the last
    column unpadded."""
    widths = [max(10, *(len(r[i]) + 3 for r in [header, *rows])) for i in range(len(header) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1] + "\n" for r in [header, *rows])


def human_size(size: float, precision: int = 3) -> str:
    """docker's units.HumanSizeWithPrecision: decimal units, `precision` significant digits."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (Go's up to 9 fractional digits), None when
    it is not one."""
    if not isinstance(text, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ago(created: float | None, now: float) -> str:
    """"2 years ago", as docker says it; "N/A" when the time is unknown."""
    if created is None:
        return "N/A"
    return human_duration(now - created) + " ago"


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go rounds the duration to the hour here
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"
