"""Exact integer expressions of config fields, fitted to the shapes and counts transformers builds.

An expression is a sum of terms `coefficient · field · field` (or `field // field`), the simplest (fewest
terms, then degree) that reproduces every sample exactly; `vramplan.measure.architectures` fits one per
tensor dimension and count. Float least squares proposes, Gaussian elimination over the rationals decides.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np


def _monomials(fields: list[str]) -> list[tuple[str, ...]]:
    mons: list[tuple[str, ...]] = [()]
    mons += [(f,) for f in fields]
    mons += [(a, b) for a, b in itertools.combinations_with_replacement(fields, 2)]
    ratios = [f"{a}//{b}" for a, b in itertools.permutations(fields, 2)]
    mons += [(r,) for r in ratios]
    mons += [(f, r) for f in fields for r in ratios]  # num_key_value_heads * (hidden_size // num_attention_heads)
    mons += [(r, r) for r in ratios]  # a vision tower's patches: (image_size // patch_size) ** 2
    return mons


def mono_value(mono: tuple[str, ...], values: dict[str, int]) -> int:
    v = 1
    for f in mono:
        if "//" in f:
            a, b = f.split("//")
            v *= values[a] // values[b]
        else:
            v *= values[f]
    return v


def _solve(rows: list[list[int]], target: list[int]) -> list[Fraction] | None:
    """Exact least-squares-free solve: Gaussian elimination over the rationals; None unless exact and unique."""
    n = len(rows[0])
    mat = [[Fraction(x) for x in r] + [Fraction(t)] for r, t in zip(rows, target, strict=True)]
    piv_cols: list[int] = []
    r = 0
    for c in range(n):
        p = next((i for i in range(r, len(mat)) if mat[i][c] != 0), None)
        if p is None:
            return None  # a free column: not unique
        mat[r], mat[p] = mat[p], mat[r]
        pv = mat[r][c]
        mat[r] = [x / pv for x in mat[r]]
        for i in range(len(mat)):
            if i != r and mat[i][c] != 0:
                f = mat[i][c]
                mat[i] = [a - f * b for a, b in zip(mat[i], mat[r], strict=True)]
        piv_cols.append(c)
        r += 1
    if any(row[n] != 0 for row in mat[r:]):
        return None
    return [mat[i][n] for i in range(n)]


def fit(samples: list[dict[str, int]], target: list[int], cache: dict | None = None) -> list[list] | None:
    """The simplest sum of monomials (by number of terms, then degree) equal to `target` in every sample.

    The fields tried are those that moved in a sample where the target moved; if no sum of them fits, also
    those that moved together in a sample where it did not (head_dim halves when num_attention_heads doubles).
    """
    if len(set(target)) == 1:
        return [[target[0], []]]
    if cache is not None:
        if tuple(target) not in cache:
            cache[tuple(target)] = fit(samples, target)
        return cache[tuple(target)]
    base = samples[0]
    moved = [{k for k in s if s.get(k) != base.get(k)} for s in samples]
    everywhere = set.intersection(*(set(s) for s in samples))  # a field some samples lack cannot explain them all
    changed = set().union(*(m for m, t in zip(moved, target, strict=True) if t != target[0])) & everywhere
    together = set().union(*(m for m, t in zip(moved, target, strict=True) if t == target[0] and len(m) > 1))
    together &= everywhere
    for fields in (changed, changed | together):
        expr = _fit_fields(samples, target, sorted(fields, key=lambda f: (len(f), f))[:10])
        if expr is not None:
            return expr
    return None


def _fit_fields(samples: list[dict[str, int]], target: list[int], fields: list[str]) -> list[list] | None:
    mons = [m for m in _monomials(fields) if m]
    keep, seen = [], set()
    for i, s in enumerate(samples):  # distinct rows only: most samples leave these fields alone
        row = (*(s.get(f) for f in fields), target[i])
        if None not in row and row not in seen:
            seen.add(row)
            keep.append(i)
    if len(keep) < 2:
        return None
    tgt = [target[i] for i in keep]
    tgt_f = np.array(tgt, dtype=float)
    vals = {}
    for m in mons:
        try:
            vals[m] = [mono_value(m, samples[i]) for i in keep]
        except ZeroDivisionError:
            continue
    mons = [m for m in mons if m in vals]
    # fewest terms first (a constant is a term), floor division only when nothing else fits
    plain = [m for m in mons if "//" not in "".join(m)]
    for terms in (1, 2, 3):  # fewest terms first; floor division only when no plain sum that long fits
        for pool in (plain, mons):
            for const in (False, True):
                size = terms - const
                if size < 1 or (size >= 2 and len(pool) > 400) or (size == 3 and len(pool) > 40):
                    continue
                for combo in itertools.combinations(pool, size):
                    cols = [vals[m] for m in combo] + ([[1] * len(keep)] if const else [])
                    if len(keep) < len(cols) + 1:
                        continue
                    a = np.array(cols, dtype=float).T
                    x, *_ = np.linalg.lstsq(a, tgt_f, rcond=None)
                    if not np.allclose(a @ x, tgt_f, rtol=1e-9, atol=1e-6):
                        continue  # a float pass first; the exact solve below decides
                    sol = _solve([list(r) for r in zip(*cols, strict=True)], tgt)
                    if sol is None or any(c == 0 or c.denominator > 2 for c in sol):
                        continue
                    out = [[_num(c), list(m)] for c, m in zip(sol, combo, strict=False)]
                    return [*out, [_num(sol[-1]), []]] if const else out
    return None


def _num(c: Fraction) -> int | str:
    return int(c) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


def fmt(expr: list[list]) -> str:
    parts = []
    for coef, mono in expr:
        body = "*".join(mono)
        parts.append(f"{coef}" if not mono else (body if coef == 1 else f"{coef}*{body}"))
    return " + ".join(parts)
