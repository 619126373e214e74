"""Text made inert before it reaches a terminal: control characters are shown escaped, never obeyed.

Model names, pipeline strings, reasons and data paths come from users' files and code; printed raw, an
ESC sequence among them clears the screen or retitles the window, a carriage return overwrites what
was printed, and a bidirectional override reorders what the reader sees (CVE-2021-42574). Every line
the CLI prints from such text goes through `inert`.
"""

from __future__ import annotations

import unicodedata

# Unicode's explicit bidirectional formatting characters (LRE..RLO, LRI..PDI) and the marks LRM, RLM, ALM.
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
# Every control character (C0, DEL, C1: Unicode category Cc) and the bidi ones, as Python writes them escaped.
_ESCAPES = {cp: (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}")
            for cp in [*(c for c in range(0x100) if unicodedata.category(chr(c)) == "Cc"), *_BIDI]}
_ESCAPES.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})
_KEEP_NEWLINES = {k: v for k, v in _ESCAPES.items() if k != ord("\n")}


def inert(text: object, *, newlines: bool = False) -> str:
    """`str(text)` with every control character (ESC, CR, BEL, NUL, DEL, the C1 range) and Unicode
    bidirectional override written as its escape (`\\x1b`, `\\u202e`), so a terminal shows it rather
    than acting on it. `newlines`: keep line feeds (a multi-line table); otherwise the result is one line."""
    return str(text).translate(_KEEP_NEWLINES if newlines else _ESCAPES)
