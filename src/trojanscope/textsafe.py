"""Text a terminal shows literally: names from files and users never restyle or hide output.

Kept free of heavy imports: the scan command's fast start-up path uses it too.
"""

from __future__ import annotations

import re

#: Characters that restyle, hide or reorder what a terminal shows: C0 and C1 controls (ESC
#: sequences, carriage returns), zero-width characters and bidirectional overrides.
HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
#: The same, except line breaks and tabs (trojanscope's own text may span lines).
HIDDEN_INLINE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def escape_match(match: re.Match[str]) -> str:
    """A hidden character as its Python escape (``\\x1b``, ``\\u202e``)."""
    return match.group().encode("unicode_escape").decode("ascii")


def shown(value: object) -> str:
    """``value`` as one line a terminal shows literally: control, zero-width and bidi characters
    are written as escapes (``\\x1b``, ``\\n``, ``\\u202e``), so a name cannot disguise itself."""
    return HIDDEN.sub(escape_match, str(value))
