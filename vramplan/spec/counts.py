"""The counts a user types (`--batch`, `--seq`, `--grad-accum`, `--lora-rank`, ...): their one parser and their
limits."""

from __future__ import annotations

import re

from vramplan.errors import VramplanError

# Limits on what a user types, far above any real run; beyond them a value is a typo (`--batch 1e9`), and
# refusing it up front keeps every search over a setting short. Sizes: LLaMA-Factory's and axolotl's largest
# documented cutoff_len / sequence_len are 1M tokens; Llama-4-Scout's context is 10M.
LIMITS: dict[str, int] = {
    "batch": 2**20,  # per_device_train_batch_size
    "seq": 2**24,  # 16,777,216 tokens
    "grad_accum": 2**20,
    "lora_rank": 2**16,  # PEFT's r; the widest Linear of a supported model is 2**20
    "lora_alpha": 2**20,
}

_COUNT = re.compile(r"\s*(-?)\s*(\d+)\s*([kK]?)\s*")
_COUNT_DIGITS = 30  # int() of a longer digit string is slow (and past 4,300 digits refused); no count is that big


def parse_count(text: str, flag: str, *, signed: bool = False) -> int:
    """A count as typed: `2048`, or `2k` / `2K` for 2 × 1024 (LLaMA-Factory's cutoff_len sizes), the one parser
    of every count option (`--batch`, `--seq`, `--grad-accum`, `--lora-rank`, `serve --max-model-len`, ...).

    Positive only, unless `signed`: then `-3` parses to -3 and the caller's range check (`positive`) names the
    flag and the range, as it does for a value from a config file.
    """
    found = _COUNT.fullmatch(str(text))
    if not found or (found.group(1) and not signed) or len(found.group(2)) > _COUNT_DIGITS:
        shown = repr(text) if len(str(text)) <= 40 else repr(str(text)[:39] + "…")
        raise VramplanError(f"{flag} takes a positive integer such as 2048 or 2k (× 1024), got {shown}")
    value = int(found.group(2)) * (1024 if found.group(3) else 1)
    return -value if found.group(1) else value
