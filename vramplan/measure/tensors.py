"""Finding the tensors the tracker registers: inside nested containers and traceable wrapper subclasses, and
bitsandbytes' quantization state on a module's parameters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

# Tensor attributes of bitsandbytes parameters that are quantization state, not the packed weight.
QUANT_ATTRS = ("quant_state", "SCB", "CB")


def leaf_tensors(obj: object) -> Iterator[torch.Tensor]:
    """Tensors in nested lists/tuples/dicts; traceable wrapper subclasses opened to their inner tensors."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if is_traceable_wrapper_subclass(item):
                attrs, _ = item.__tensor_flatten__()
                stack.extend(getattr(item, a) for a in attrs)
            else:
                yield item
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def quant_state_tensors(module: torch.nn.Module) -> Iterable[torch.Tensor]:
    """bitsandbytes quantization state of `module`'s own parameters (bitsandbytes 0.50 attribute names).

    `Params4bit.quant_state` is a `QuantState` (absmax, code, offset, nested `state2`); `Int8Params` carries
    `SCB` (fp32 row scales) and `CB` (which aliases the int8 weight: already counted, so it adds nothing).
    """
    for param in module.parameters(recurse=False):
        for attr in QUANT_ATTRS:
            yield from tensors_in(getattr(param, attr, None))
    state = getattr(module, "state", None)  # Linear8bitLt's MatmulLtState
    for attr in ("CB", "SCB"):
        yield from tensors_in(getattr(state, attr, None))


def tensors_in(obj: object) -> Iterator[torch.Tensor]:
    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if hasattr(obj, "absmax") and hasattr(obj, "__dict__"):  # a bitsandbytes QuantState
        for value in vars(obj).values():
            if isinstance(value, torch.Tensor) or (hasattr(value, "absmax") and hasattr(value, "__dict__")):
                yield from tensors_in(value)
