"""The control protocol's text layer (control-spec §2), sans-I/O: commands in, replies out.

`CommandReader` splits a controller's bytes into `ControlCommand`s: one line, or for a
``+KEYWORD`` command a first line plus data lines up to a lone ``.`` (dot-decoded).  It
never raises on input: a line longer than `MAX_LINE` sets ``.error`` (C tor answers
"500 Line too long." and closes; its limit is 1 MiB, ours is smaller, no controller
sends long lines except LOADCONF).  The buffer never holds more than `MAX_BUFFER` bytes.

The argument helpers follow control-spec §2.1: words separated by spaces, ``Key=Value``
pairs, and C-escaped ``"quoted strings"`` (§2.1.1).  `Reply` writes replies: ``250-``
mid lines, ``250+`` data lines with dot-encoding and the final ``250 OK``.

Text is Latin-1 both ways, so every byte a controller sends survives (a quoted password
in UTF-8 comes back as its bytes with ``.encode("latin-1")``).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 64 * 1024  # one line of a command, or of a + command's data
MAX_BUFFER = 256 * 1024  # a + command's data, all lines together
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One command: ``keyword`` as sent (compare case-insensitively), the rest of its
    first line in ``args``, and for a ``+`` command the decoded data in ``body``."""

    keyword: str
    args: str
    body: str | None = None

    @property
    def name(self) -> str:
        return self.keyword.upper()


class CommandReader:
    """Bytes from a controller in, `ControlCommand`s out (`next_command`)."""

    __slots__ = ("_buffer", "_lines", "error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []  # the lines of a + command read so far
        self.error: str | None = None  # set once; the connection must then close

    def receive_data(self, data: bytes) -> None:
        if self.error is None:
            self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer) + sum(len(line) for line in self._lines)

    def next_command(self) -> ControlCommand | None:
        """The next complete command, or None until more data arrives (or after an error)."""
        while self.error is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self.error = "Line too long."
                return None
            if end > MAX_LINE:
                self.error = "Line too long."
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            line = raw.decode("latin-1")
            if line.endswith("\r"):
                line = line[:-1]
            if self._lines:
                if line == ".":
                    first, data = self._lines[0], self._lines[1:]
                    self._lines = []
                    keyword, args = _split_first(first[1:])
                    return ControlCommand(keyword, args, "\n".join(data))
                self._lines.append(line[1:] if line.startswith(".") else line)
                if self.buffered > MAX_BUFFER:
                    self.error = "Line too long."
                    return None
                continue
            if line.startswith("+"):
                self._lines.append(line)
                continue
            keyword, args = _split_first(line)
            return ControlCommand(keyword, args)
        return None


def _split_first(line: str) -> tuple[str, str]:
    keyword, _, args = line.lstrip(" ").partition(" ")
    return keyword, args


# -- arguments -------------------------------------------------------------------------------


class ArgumentError(ValueError):
    """Arguments that do not parse; the text is the reply's ("Bad quoted string" ...)."""


def unquote(text: str, start: int = 0) -> tuple[str, int]:
    """Decode the quoted string at ``text[start] == '"'``; return (value, index after it)."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES and nxt:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and len(text) >= i + 4 and all(ch in _HEX for ch in text[i + 2 : i + 4]):
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        elif nxt and nxt in _OCTAL:
            j = i + 1
            while j < min(n, i + 4) and text[j] in _OCTAL:
                j += 1
            value = int(text[i + 1 : j], 8)
            if value > 255:
                raise ArgumentError("Bad quoted string")
            out.append(chr(value))
            i = j
        else:
            raise ArgumentError("Bad quoted string")
    raise ArgumentError("Unterminated quoted string")


def quote(value: str) -> str:
    """``value`` as a control-spec quoted string (C escapes, octal for other controls)."""
    out = ['"']
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def split_words(text: str) -> list[str]:
    """Space-separated words (GETINFO keys, SETEVENTS names); quoted words are decoded."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        if text[i] == '"':
            word, i = unquote(text, i)
        else:
            end = text.find(" ", i)
            end = n if end < 0 else end
            word, i = text[i:end], end
        words.append(word)
    return words


def parse_keywords(text: str) -> list[tuple[str, str | None, bool]]:
    """``Key``, ``Key=Value`` and ``Key="quoted"`` items: (key, value or None, quoted).

    A lone ``"quoted"`` item has the key "" (AUTHENTICATE's password).
    """
    items: list[tuple[str, str | None, bool]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        if text[i] == '"':
            value, i = unquote(text, i)
            items.append(("", value, True))
            continue
        j = i
        while j < n and text[j] not in " =":
            j += 1
        key = text[i:j]
        if j < n and text[j] == "=":
            if j + 1 < n and text[j + 1] == '"':
                value, i = unquote(text, j + 1)
                items.append((key, value, True))
                continue
            end = text.find(" ", j + 1)
            end = n if end < 0 else end
            items.append((key, text[j + 1 : end], False))
            i = end
        else:
            items.append((key, None, False))
            i = j
        if i < n and text[i] != " ":
            raise ArgumentError("Bad argument list")
    return items


# -- replies ---------------------------------------------------------------------------------


def dot_encode(body: str) -> str:
    """A data block's lines with CRLF endings, leading dots doubled, and the ``.`` line."""
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = [("." + line if line.startswith(".") else line) + "\r\n" for line in lines]
    return "".join(out) + ".\r\n"


class Reply:
    """A reply of one or more lines (control-spec §2.3), written with `to_bytes`.

    ``Reply().line("version=0.1").line("OK").to_bytes()`` -> ``250-version=0.1\\r\\n250 OK\\r\\n``.
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[tuple[int, str, str | None]] = []

    def line(self, text: str, code: int = 250) -> Reply:
        self._parts.append((code, text, None))
        return self

    def data(self, text: str, body: str, code: int = 250) -> Reply:
        """A ``250+text`` line followed by ``body`` dot-encoded."""
        self._parts.append((code, text, body))
        return self

    def to_bytes(self) -> bytes:
        out: list[str] = []
        last = len(self._parts) - 1
        for index, (code, text, body) in enumerate(self._parts):
            if body is not None:
                out.append(f"{code}+{_one_line(text)}\r\n{dot_encode(body)}")
            else:
                sep = " " if index == last else "-"
                out.append(f"{code}{sep}{_one_line(text)}\r\n")
        return "".join(out).encode("latin-1", "replace")


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", " ")


def reply(code: int, text: str) -> bytes:
    """A one-line reply: ``reply(250, "OK")``."""
    return f"{code} {_one_line(text)}\r\n".encode("latin-1", "replace")


def event(text: str, body: str | None = None) -> bytes:
    """An asynchronous event: ``650 text``, or ``650+text`` + data + ``650 OK``."""
    if body is None:
        return reply(650, text)
    return Reply().data(text, body, 650).line("OK", 650).to_bytes()
