"""Searches for the last value a monotone predicate accepts (true up to some n, false after it): galloping then
bisection, in O(log n) calls. `fit.py` and `advice.py` search batch, sequence and rank with them."""

from __future__ import annotations

from collections.abc import Callable


def largest(ok: Callable[[int], bool], lo: int, cap: int, known_bad: int | None = None) -> int:
    """Largest n in [lo, cap] with ok(n), for a monotone ok (true, then false); lo - 1 when ok(lo) fails.

    Gallops (lo, 2·lo, 4·lo, ...) to bracket the limit, unless `known_bad` (a value known to fail) already
    bounds it, then bisects: about 2·log2(limit) calls.
    """
    if cap < lo or not ok(lo):
        return lo - 1
    good = lo
    bad = cap + 1 if known_bad is None else min(known_bad, cap + 1)
    if known_bad is None:
        while good < cap:
            probe = min(2 * good, cap)
            if not ok(probe):
                bad = probe
                break
            good = probe
        else:
            return cap
    return _bisect(ok, good, bad)


def _bisect(ok: Callable[[int], bool], good: int, bad: int) -> int:
    """The largest value `ok` accepts between `good` (accepted) and `bad` (refused)."""
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def settle(ok: Callable[[int], bool], n: int, lo: int, cap: int) -> int:
    """The largest value in [lo, cap] that `ok` accepts with the next one refused, searched from `n` (another
    verdict's limit, close to it): up from `n` while `ok`, else down, galloping, then bisection; lo - 1 when
    `ok(lo)` fails. Two calls when `n` is the limit (`ok(n)`, not `ok(n + 1)`)."""
    start = max(n, lo)
    if start > cap:
        return lo - 1
    if ok(start):
        good, step, bad = start, 1, None
        while good < cap:
            probe = min(good + step, cap)
            if not ok(probe):
                bad = probe
                break
            good, step = probe, 2 * step
        if bad is None:
            return cap
    else:
        bad, step, good = start, 1, None
        while bad > lo:
            probe = max(bad - step, lo)
            if ok(probe):
                good = probe
                break
            bad, step = probe, 2 * step
        if good is None:
            return lo - 1
    return _bisect(ok, good, bad)
