"""Reading the files and names a user passes (MODEL, --from, validate --data, --store): one place that turns
every way a path or a file can be wrong into one `VramplanError` line.

Wrong ways handled: a name too long for the file system or with a NUL byte (OSError / ValueError from
`os.stat`), a folder, a missing or unreadable file, a file too large to be a config, bytes that are not
UTF-8 (a Latin-1 export, a binary file passed by mistake).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError

if TYPE_CHECKING:
    from pathlib import Path

MAX_NAME_CHARS = 4096  # Linux PATH_MAX; a hub id is at most 96 + 1 + 96 characters
MAX_CONFIG_BYTES = 16 * 1024**2  # the largest config.json / training YAML on the hub is a few hundred KiB
MAX_DATA_BYTES = 256 * 1024**2  # validate --data, a JSON-lines file


def short(text: str, limit: int = 60) -> str:
    """`text` for an error message: at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_name(name: str, what: str) -> str:
    """`name` if it can be a path or an identifier; else the error naming what is wrong with it."""
    if "\x00" in name:
        raise VramplanError(f"{what} {short(name)!r} contains a NUL byte; pass a file path or a name")
    if len(name) > MAX_NAME_CHARS:
        raise VramplanError(
            f"{what} is {len(name):,} characters long (the limit is {MAX_NAME_CHARS:,}); pass a file path or a name"
        )
    return name


def is_file(path: str | os.PathLike[str]) -> bool:
    """`Path(path).is_file()` of a path in pathlib's form, False where the file system refuses the name (too
    long a component, ...). os.path, not pathlib: a cold `estimate` of a built-in model never imports pathlib."""
    return os.path.isfile(path)  # False on any OSError or ValueError, as the pathlib call in a try was


def is_dir(path: str | os.PathLike[str]) -> bool:
    """`Path(path).is_dir()` of a path in pathlib's form, False where the file system refuses the name."""
    return os.path.isdir(path)


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of `path`; a missing, unreadable, oversized or non-UTF-8 file is one error line. A str
    is read as pathlib reads it (`a//b.json/` is `a/b.json`, `""` is `.`)."""
    if not isinstance(path, os.PathLike):
        from pathlib import Path

        path = Path(path)
    return read_path_text(os.fspath(path), what, max_bytes)


def read_path_text(path: str, what: str = "file", max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """`read_text` of a path already in pathlib's form (`str(Path(path)) == path`: a shipped profile's)."""
    shown = short(path, 120)
    if is_dir(path):
        raise VramplanError(f"{shown} is a folder; pass the {what} in it")
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise VramplanError(
                f"{shown}: {size:,} bytes is too large for a {what} (the limit is {max_bytes:,}); is it the right file?"
            )
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VramplanError(f"no such file: {shown}") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VramplanError(f"cannot read {shown}: {reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        kind = "a binary file" if b"\x00" in data[:4096] else "text in another encoding"
        raise VramplanError(
            f"{shown}: byte {e.start} is not UTF-8 ({kind}); pass a UTF-8 {what} (re-save it as UTF-8)"
        ) from None


def parse_json(text: str, shown: str, what: str) -> Any:
    """`text` as JSON, or one line naming `shown` (the file as displayed) and the line of the error; `what`
    the file is expected to be ("a config.json"), named when it is nested too deeply to be one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise VramplanError(f"{shown}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise VramplanError(f"{shown}: JSON nested too deeply to be {what}") from None
