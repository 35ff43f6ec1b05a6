"""The context a harness run holds: bitsandbytes' log noise dropped, its quantization-map cache kept, and
FakeTensorMode for a fake-device trace."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# bitsandbytes 0.50 logs a warning on every int8 matmul whose input is not fp16 (`MatMul8bitLt: inputs will be
# cast ...`: thousands per step) and, importing its CPU backend, that the optional `kernels` package is absent.
# Neither changes what is allocated; the harness drops both while it runs.
_BNB_NOISE = {
    "bitsandbytes.autograd._functions": ("inputs will be cast",),
    "bitsandbytes.backends.cpu.ops": ("kernels-community",),
}


@contextlib.contextmanager
def quiet_bnb() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropMessages(*frags)) for name, frags in _BNB_NOISE.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)


@contextlib.contextmanager
def bnb_cache_scope() -> Iterator[None]:
    """Keep bitsandbytes' module-level quantization-map cache (`functional.name2qmap`) as it was.

    bitsandbytes caches the dynamic map on the device of the first tensor it quantizes; a meta-device trace
    would leave a meta map behind that a later real run in the same process cannot copy from.
    """
    import sys

    bnbf = sys.modules.get("bitsandbytes.functional")
    before = dict(bnbf.name2qmap) if bnbf is not None else None
    try:
        yield
    finally:
        bnbf = sys.modules.get("bitsandbytes.functional")
        if bnbf is not None:
            bnbf.name2qmap.clear()
            bnbf.name2qmap.update(before or {})


@contextlib.contextmanager
def fake_mode(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield
