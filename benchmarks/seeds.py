"""Room seed lists for the benchmarks' ``--seeds`` options."""

from __future__ import annotations


def parse_seeds(text: str) -> list[int]:
    """Seeds from "1000-1011", "0,5" or "2000-2003,2010", in order."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:  # a range (a leading "-" would be a sign)
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out
