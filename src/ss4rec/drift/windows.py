"""Time windows for drift reports: calendar months, calendar quarters or N-day blocks.

    >>> spec = WindowSpec.parse("month")
    >>> spec.keys(np.array([891388800.0]))  # 1998-04-01 -> months since 1970-01
    array([339])
    >>> spec.label(339)
    '1998-04'
    >>> WindowSpec.parse("30-days", anchor=891388800.0).label(0)
    '1998-04-01..1998-05-01'

A window is identified by an integer key, so per-window counts can be accumulated with
integer arithmetic while files are streamed. Months and quarters are calendar windows in
UTC; N-day windows start at ``anchor`` (the first timestamp of the future file), so the
first future window begins with the future: window ``k`` holds ``anchor + k*N days <= t <
anchor + (k+1)*N days`` (negative keys lie before the anchor, e.g. in the past file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ss4rec.errors import UserError

DAY = 86400.0


@dataclass(frozen=True)
class WindowSpec:
    """``kind`` is ``month``, ``quarter`` or ``days`` (then ``days`` and ``anchor`` are set)."""

    kind: str
    days: int = 0
    anchor: float | None = None

    @classmethod
    def parse(cls, text: str, anchor: float | None = None) -> "WindowSpec":
        """``month`` / ``quarter`` / ``N-days`` (also ``Nd``, ``N``) -> a spec."""
        value = str(text).strip().lower()
        if value in ("month", "monthly", "m"):
            return cls("month")
        if value in ("quarter", "quarterly", "q"):
            return cls("quarter")
        match = re.fullmatch(r"(\d+)\s*(-?\s*days?|d)?", value)
        if match and int(match.group(1)) > 0:
            return cls("days", int(match.group(1)), anchor)
        raise UserError(f"--window {text!r}: expected month, quarter or a number of days "
                        "such as 30-days (or 30d, 30)")

    def with_anchor(self, anchor: float) -> "WindowSpec":
        return WindowSpec(self.kind, self.days, float(anchor))

    @property
    def name(self) -> str:
        return f"{self.days}-days" if self.kind == "days" else self.kind

    def keys(self, times: np.ndarray) -> np.ndarray:
        """Epoch seconds ``[N]`` -> int64 window keys ``[N]``."""
        if self.kind == "days":
            if self.anchor is None:
                raise ValueError("N-day windows need an anchor time (see with_anchor)")
            return np.floor((times - self.anchor) / (self.days * DAY)).astype(np.int64)
        months = np.floor(times).astype(np.int64).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
        return months if self.kind == "month" else np.floor_divide(months, 3)

    def start(self, key: int) -> float:
        """The window's first second (epoch seconds)."""
        if self.kind == "days":
            return float(self.anchor + key * self.days * DAY)
        months = int(key) * (3 if self.kind == "quarter" else 1)
        return float(np.datetime64(months, "M").astype("datetime64[s]").astype(np.int64))

    def end(self, key: int) -> float:
        """The first second after the window."""
        return self.start(key + 1)

    def label(self, key: int) -> str:
        start = pd.Timestamp(self.start(key), unit="s")
        if self.kind == "month":
            return start.strftime("%Y-%m")
        if self.kind == "quarter":
            return f"{start.year}Q{(start.month - 1) // 3 + 1}"
        end = pd.Timestamp(self.end(key), unit="s")
        return f"{start.strftime('%Y-%m-%d')}..{end.strftime('%Y-%m-%d')}"
