"""The one timing loop of ``peftlab speed``: every implementation warmed up, then timed interleaved.

Train steps, inference calls and decoding passes all go through it. Repetitions alternate the order
(A B C, C B A, ...), so a burst of load from other processes lands on every implementation alike;
a figure is the median of its repetitions, with the quartiles and extremes beside it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(calls: dict[str, Callable[[], Any]], n: int, device: torch.device, *,
            may_fail: Callable[[str], bool] = lambda name: False,
            log: Callable[[str], None] = print, label: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """Run each call ``n`` times, one implementation after the other; returns what each call
    returned last, and the errors of those that failed. An implementation that ``may_fail`` (a reference that does not
    compile) is reported and left out of the timing; any other error is raised."""
    outputs, errors = {}, {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        try:
            for _ in range(n):
                outputs[name] = call()
            sync(device)
        except Exception as e:
            if not may_fail(name):
                raise
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log(f"  {label}{name}: warm-up {time.perf_counter() - t0:.1f}s"
            + (f"  FAILED {errors[name]}" if name in errors else ""))
    return outputs, errors


def interleave(calls: dict[str, Callable[[], Any]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, ``reps`` times, the implementations' order reversed every other round."""
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t = time.perf_counter()
            calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


def summary(times: list[float], prefix: str) -> dict:
    """``<prefix>_median``, ``_min``, ``_max``, ``_q1``, ``_q3`` and ``_all`` (in the order timed)."""
    ts = sorted(times)
    return {f"{prefix}_median": statistics.median(ts), f"{prefix}_min": ts[0], f"{prefix}_max": ts[-1],
            f"{prefix}_q1": _quantile(ts, 1), f"{prefix}_q3": _quantile(ts, 3), f"{prefix}_all": list(times)}


def _quantile(sorted_values: list[float], quarter: int) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=4, method="inclusive")[quarter - 1]
