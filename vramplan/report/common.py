"""What every report shares: GiB figures, share bars, the title of a training result, the verdict line, the
console. GiB are binary (1024³ bytes) everywhere, and labelled as such.

rich is imported inside the functions that build rich objects, so a `--json` command never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

GIB = 1024**3
VERDICT_STYLE = {"fits": "bold green", "tight": "bold yellow", "oom": "bold red"}
VERDICT_TEXT = {"fits": "fits", "tight": "tight", "oom": "does not fit"}


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def bar(frac: float, width: int = 24) -> str:
    frac = min(max(frac, 0.0), 1.0)
    full = int(frac * width)
    rest = frac * width - full
    return "█" * full + ("▌" if rest >= 0.5 else "") if frac > 0 else ""


def console() -> Console:
    """The console every table is drawn on: the terminal's width (COLUMNS when set, else 80 off a terminal),
    colour only on a terminal; off a terminal (piped, redirected) no ANSI codes and no trailing blanks (rich
    pads every cell and title to the table's width), so `grep`, `cut` and `diff` see the text alone."""
    import sys

    from rich.console import Console

    out = sys.stdout
    return Console() if out.isatty() else Console(file=TrimmedLines(out))


class TrimmedLines:
    """A text stream that writes each complete line without its trailing blanks (what rich's padding leaves);
    everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        if lines:
            self.stream.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ...: the wrapped stream's
        return getattr(self.stream, name)


# What the non-ASCII characters of the reports become on a stream that cannot encode them (LANG=C with
# PYTHONIOENCODING=ascii, a latin-1 terminal): readable ASCII instead of a UnicodeEncodeError traceback. rich
# draws its tables with ASCII boxes on such a stream by itself.
ASCII_FALLBACK = {
    "·": "-", "×": "x", "−": "-", "—": "-", "–": "-", "→": "->", "≥": ">=", "≤": "<=", "±": "+/-", "³": "^3",
    "⁹": "^9", "█": "#", "▌": "|", "•": "*", "─": "-", "━": "-", "┃": "|", "│": "|", "╇": "+", "…": "...",
    "Δ": "d", "°": " deg", "µ": "u", "✓": "ok",
}  # fmt: skip
ENCODE_ERRORS = "vramplan-ascii"


def _ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(ASCII_FALLBACK.get(ch, "?") for ch in text), error.end


def encodable_streams() -> None:
    """Make stdout and stderr write what their encoding cannot hold as ASCII (ASCII_FALLBACK, else `?`)
    instead of raising; a UTF-8 stream is left alone."""
    import codecs
    import sys

    try:
        codecs.lookup_error(ENCODE_ERRORS)
    except LookupError:
        codecs.register_error(ENCODE_ERRORS, _ascii_fallback)
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ENCODE_ERRORS)


def hanging(prefix: str, text: str, width: int) -> str:
    """`prefix` + `text` wrapped at `width` between words, continuation lines indented under the text (a
    hanging indent), so a wrapped `warning:` or `advice:` line still reads as one item. Never breaks a word,
    a flag (`--no-kbit-prep`) or a path."""
    import textwrap

    return textwrap.fill(
        text,
        width=max(width, len(prefix) + 24),
        initial_indent=prefix,
        subsequent_indent=" " * len(prefix),
        break_long_words=False,
        break_on_hyphens=False,
    )


def warn(text: str, label: str = "warning") -> None:
    """`label: text` on stderr: the one way a warning or note reaches the user outside a table. Wrapped with a
    hanging indent at COLUMNS when it is set, else at the terminal's width; one line when stderr is neither
    (a log or a pipe: `grep warning:` gets the whole warning)."""
    import os
    import shutil
    import sys

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width: int | None = int(columns)
    else:
        width = shutil.get_terminal_size().columns if sys.stderr.isatty() else None
    line = f"{label}: {text}"
    print(line if width is None else hanging(f"{label}: ", text, width), file=sys.stderr, flush=True)


def flow(items: list[str], width: int, separator: str = " · ", indent: str = "  ", lead: str | None = None) -> str:
    """Items joined by `separator`, wrapped at `width` between items: a footer such as `params: … · peak in
    forward (logits and loss) · units GiB = 1024³ B` never splits `(logits and loss)` or `1024³ B` across
    lines. A line broken between items continues with `indent` and the separator (`  · peak in …`); an item
    longer than a whole line wraps between its words, and the items after it continue on its last line.
    `lead`: what starts a line broken between items (default: the separator without its leading blank)."""
    lead = separator.lstrip() if lead is None else lead
    room = max(width - len(indent) - len(lead), 16)
    # (text, joiner before it): whole items, or the words of an item too long for any line
    pieces: list[tuple[str, str]] = []
    for n, item in enumerate(items):
        words = [item] if len(item) <= room else item.split()
        pieces += [(word, separator if n and k == 0 else " ") for k, word in enumerate(words)]
    lines: list[str] = []
    line = ""
    for text, joiner in pieces:
        if not line:
            line = text
        elif len(line) + len(joiner) + len(text) <= width:
            line += joiner + text
        else:
            lines.append(line)
            line = indent + (lead if joiner == separator else "") + text
    lines.append(line)
    return "\n".join(lines)


def listed(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with its tuples as lists (JSON arrays)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def train_title(b: Any) -> str:
    """`model · method · batch B × seq S [packed] · gpu` of a training result (estimate, measurement, one GPU's
    share); a PEFT method other than LoRA after the method (`lora/ia3`), a stage other than SFT after it (`dpo
    (reference adapter)`)."""
    t = b.train
    shape = f"batch {t.batch} × seq {t.seq}" + (" packed" if t.packing else "")
    method = t.method if t.peft.name == "lora" else f"{t.method}/{t.peft.name}"
    stage = ""
    if not t.stage.is_sft:
        stage = f" · {t.stage.stage}" + (f" (reference {t.stage.reference})" if t.stage.reference != "none" else "")
        if t.stage.ebft_mode == "strided":
            st = t.stage
            stage += f" strided ({st.ebft_n_samples} rollouts of {st.ebft_generate_max_len} every {st.ebft_stride})"
        elif t.stage.generates:
            stage += f" · generation {t.stage.generation}"
    return f"{b.model} · {method}{stage} · {shape}" + (f" · {b.gpu}" if b.gpu else "")


def recipe_line(t: Any) -> str:
    """`recipe: trl 1.16.0 · loss trl-chunked · gradient checkpointing`: whose defaults the step follows."""
    ckpt = "gradient checkpointing" if t.grad_ckpt else "no checkpointing"
    kernels = getattr(t, "lora_kernels", ())
    return (
        f"recipe: {t.recipe} · loss {t.loss} · {ckpt}"
        + (" · packed" if t.packing else "")
        + (f" · LoRA kernels {','.join(kernels)}" if kernels else "")
    )


def stack_line(t: Any) -> str:
    """`stack: transformers 4.48.3 (named) · ... · older releases: shifted-logits-copy, ...` when the stack
    modelled is not the estimator's own (a version named, or a rule of an older release applied); else ""."""
    stack = t.stack
    if not (stack.named or stack.applied):
        return ""
    rules = ", ".join(rule.name for rule in stack.applied) or "none"
    return f"stack: {stack.label} · older-release rules: {rules}"


def band_text(error_band: float) -> str:
    return f" (tight = within ±{100 * error_band:.0f} % estimator error)"


def verdict_line(b: Any, detail: str = "", width: int = 10**6) -> Text:
    """`fits  on GPU (X GiB): headroom Y GiB` + `detail`, the verdict coloured, for any result with a verdict
    (`PeakAccounting`: Breakdown, ServeBreakdown); wrapped at `width` under the verdict (print it with
    `soft_wrap=True`)."""
    text = f"on {b.gpu} ({gib(b.gpu_bytes)} GiB): headroom {gib(b.headroom_bytes or 0)} GiB{detail}"
    return styled_prefix(VERDICT_TEXT[b.verdict], "  ", VERDICT_STYLE[b.verdict], text, width)


def styled_prefix(label: str, separator: str, style: str, text: str, width: int) -> Text:
    """`label` (styled) + `separator` + `text`, wrapped at `width` with a hanging indent under the text."""
    from rich.text import Text

    wrapped = hanging(label + separator, text, width)
    return Text.assemble((label, style), wrapped[len(label) :])


def print_flow(text: str, console: Console, style: str | None = None) -> None:
    """`text` (items joined by ` · `) wrapped at the console's width between its items (`flow`)."""
    from rich.text import Text

    console.print(Text(flow(text.split(" · "), console.width), style=style or ""), soft_wrap=True, highlight=False)


def print_labelled(label: str, style: str, text: str, console: Console) -> None:
    """`label: text` with a hanging indent at the console's width, the label styled."""
    console.print(styled_prefix(label + ":", " ", style, text, console.width), soft_wrap=True, highlight=False)


def print_notes(notes: Any, console: Console) -> None:
    for note in notes:
        print_labelled("note", "yellow", str(note), console)


def calibration_json(b: Any) -> dict[str, Any]:
    """`{"calibration": {...}}` when stored runs replaced the documented overheads, else `{}`."""
    cal = b.overheads.calibration
    if cal is None:
        return {}
    return {
        "calibration": {
            "gpu_key": cal.gpu_key,
            "n_runs": cal.n_runs,
            "cuda_context_bytes": cal.cuda_context_bytes,
            "allocator_ratio": cal.allocator_ratio,
            "residual_band": cal.residual_band,
        }
    }


def figures_json(b: Any) -> dict[str, Any]:
    """The keys training and serving results share (`PeakAccounting`)."""
    return {
        "peak_bytes": b.peak_bytes,
        "reserved_bytes": b.reserved_bytes,
        "device_bytes": b.device_bytes,
        "peak_phase": b.peak_phase,
        "peak_moment": b.peak_moment,
        "components": b.components.as_dict(),
        "overhead": {
            "allocator_overhead_bytes": b.allocator_overhead_bytes,
            "cuda_context_bytes": b.cuda_context_bytes,
        },
        "phases": {p.phase: {"total_bytes": p.total, "moment": p.moment, **p.components.as_dict()} for p in b.phases},
        "gpu_bytes": b.gpu_bytes,
        "headroom_bytes": b.headroom_bytes,
        "verdict": b.verdict,
        "error_band": b.error_band,
    }
