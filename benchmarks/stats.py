"""Latency and connect-time distributions, merged across load-generator processes.

Samples are microseconds. A worker counts exact values (``Counter`` over an
``array`` is done in C), then rounds each distinct value to three significant
digits before sending it to the parent, so percentiles are within 0.5 % of
the exact value while the message stays small.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def quantize(value: int) -> int:
    """``value`` rounded to three significant digits (exact below 1000)."""
    if value < 1000:
        return value
    scale = int(10 ** (len(str(value)) - 3))
    return (value + scale // 2) // scale * scale


def compact(samples: Iterable[int]) -> dict[int, int]:
    """Exact samples to a histogram of quantized values."""
    out: dict[int, int] = {}
    for value, count in Counter(samples).items():
        key = quantize(max(0, value))
        out[key] = out.get(key, 0) + count
    return out


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            out[key] = out.get(key, 0) + count
    return out


def percentile(histogram: Mapping[int, int], q: float) -> int | None:
    """The smallest value with at least ``q`` percent of samples at or below it."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, int(total * q / 100 + 0.999999))
    seen = 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return key
    return max(histogram)


def summary_ms(histogram: Mapping[int, int], prefix: str) -> dict[str, float | None]:
    """``{prefix}_p50_ms``, ``_p99_ms``, ``_max_ms`` from a microsecond histogram."""

    def ms(value: int | None) -> float | None:
        return None if value is None else round(value / 1000, 3)

    return {
        f"{prefix}_p50_ms": ms(percentile(histogram, 50)),
        f"{prefix}_p99_ms": ms(percentile(histogram, 99)),
        f"{prefix}_max_ms": ms(max(histogram) if histogram else None),
    }
