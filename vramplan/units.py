"""Sizes and integer arithmetic every module shares: bytes are `int`; GiB = 1024³ B (shown, never computed in)."""

from __future__ import annotations

KIB = 1024
MIB = 1024**2
GIB = 1024**3


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for integers, exact at any size (no float): packed 4-bit bytes, absmax blocks, shards."""
    return -(-a // b)
