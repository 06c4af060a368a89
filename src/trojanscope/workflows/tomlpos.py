"""Where a key of a TOML document is written: the line to show with a validation error.

Hand-written because ``tomllib`` returns plain dicts without positions (and neither it nor
pydantic can say on which line a value was). It only runs on text ``tomllib`` has already
accepted, so it follows the grammar loosely: tables and arrays of tables, dotted and quoted
keys, inline tables, arrays (one index per element), strings of the four kinds, comments.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A position in a document: keys and array indices, as pydantic reports error locations.
Path = tuple[str | int, ...]

_BARE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class _Scanner:
    """One pass over the text, recording the line of every key and array element."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.lines: dict[Path, int] = {}
        self.table: Path = ()
        #: Elements of each array of tables so far (keyed by the array's resolved path).
        self.counts: dict[Path, int] = {}

    # -- characters --------------------------------------------------------------------
    def peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def line(self) -> int:
        return self.text.count("\n", 0, self.i) + 1

    def skip_space(self, newlines: bool = False) -> None:
        """Skip blanks and comments (and line ends when ``newlines``)."""
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def note(self, path: Path, line: int | None = None) -> None:
        """Record the line of ``path`` and of every table it implies (``a`` for ``a.b``),
        keeping the first line seen for each."""
        line = self.line() if line is None else line
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    # -- keys and values ---------------------------------------------------------------
    def string(self) -> str:
        """A string of any of the four kinds, starting at its opening quote."""
        quote = self.text[self.i]
        if self.peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.i + 3)
            if end < 0:
                raise ValueError("unterminated string")
            while self.text[end + 3 : end + 4] == quote:  # up to two quotes end the content
                end += 1
            value = self.text[self.i + 3 : end]
            self.i = end + 3
            return value
        j = self.i + 1
        while self.text[j] != quote:
            j += 2 if quote == '"' and self.text[j] == "\\" else 1
        value = self.text[self.i + 1 : j]
        self.i = j + 1
        return value

    def key(self) -> Path:
        """A dotted key: bare or quoted parts separated by dots."""
        parts: list[str | int] = []
        while True:
            self.skip_space()
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.i
                while self.i < len(self.text) and self.text[self.i] in _BARE:
                    self.i += 1
                parts.append(self.text[start : self.i])
            self.skip_space()
            if self.peek() != ".":
                return tuple(parts)
            self.i += 1

    def value(self, path: Path) -> None:
        self.skip_space()
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_space(newlines=True)
                if self.peek() in ("]", ""):
                    self.i += 1
                    return
                self.note((*path, index))
                start = self.i
                self.value((*path, index))
                self.skip_space(newlines=True)
                if self.peek() == ",":
                    self.i += 1
                    index += 1
                elif self.i == start:
                    raise ValueError("not TOML")
        elif c == "{":
            self.i += 1
            while True:
                self.skip_space()
                if self.peek() in ("}", ""):
                    self.i += 1
                    return
                line = self.line()
                key = (*path, *self.key())
                if self.peek() != "=":
                    raise ValueError("not TOML")
                self.note(key, line)
                self.i += 1
                self.value(key)
                self.skip_space()
                if self.peek() == ",":
                    self.i += 1
        else:  # a number, boolean or date: up to what ends a value
            while self.i < len(self.text) and self.text[self.i] not in ",]}\n#":
                self.i += 1

    def resolve(self, keys: Path) -> Path:
        """A header's keys with the current element of every array of tables they cross."""
        resolved: list[str | int] = []
        for part in keys:
            resolved.append(part)
            count = self.counts.get(tuple(resolved))
            if count is not None:
                resolved.append(count - 1)
        return tuple(resolved)

    def header(self) -> None:
        array = self.peek(2) == "[["
        self.i += 2 if array else 1
        line = self.line()
        keys = self.key()
        self.i += 2 if array else 1
        if array:
            parent = self.resolve(keys[:-1])
            where = (*parent, keys[-1])
            self.counts[where] = self.counts.get(where, 0) + 1
            self.table = (*where, self.counts[where] - 1)
            self.note(where, line)
        else:
            self.table = self.resolve(keys)
        self.note(self.table, line)

    def document(self) -> dict[Path, int]:
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                return self.lines
            if self.peek() == "[":
                self.header()
                continue
            line, start = self.line(), self.i
            path = (*self.table, *self.key())
            if self.peek() != "=" or self.i == start:
                raise ValueError("not TOML")
            self.note(path, line)
            self.i += 1
            self.value(path)


def key_lines(text: str) -> dict[Path, int]:
    """The line (1-based) of every key, table header and array element of ``text``: as far
    as the scan got on text that is not valid TOML."""
    scanner = _Scanner(text)
    try:
        return scanner.document()
    except (IndexError, ValueError):
        return scanner.lines


def locate(text: str, path: Sequence[str | int]) -> int | None:
    """The line where ``path`` (or the deepest part of it that is written) is, or None."""
    lines = key_lines(text)
    for end in range(len(path), 0, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None
