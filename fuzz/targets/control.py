"""The control port's command reader and argument parsers (`puretor.proto.control`).

Input: ``chunking(1) stream...``: controller bytes fed in pieces the first byte decides.
The reader must never raise; it never buffers more than a line plus a read; a command
never spans a newline in its first line.  Every command's arguments go through the
argument parsers, which may only raise `ArgumentError`; a quoted string round-trips.
"""

from __future__ import annotations

import contextlib

from fuzz.harness import Target, check, split_chunks
from puretor.proto.control import (
    MAX_BUFFER,
    MAX_LINE,
    ArgumentError,
    CommandReader,
    Reply,
    parse_keywords,
    quote,
    split_words,
    unquote,
)


def one_input(data: bytes) -> None:
    if not data:
        return
    reader = CommandReader()
    for chunk in split_chunks(data[1:], data[0]):
        reader.receive_data(chunk)
        while (cmd := reader.next_command()) is not None:
            check("\n" not in cmd.keyword + cmd.args, "a newline inside a command line")
            for parse in (split_words, parse_keywords):
                with contextlib.suppress(ArgumentError):
                    parse(cmd.args)
            text = cmd.args
            check(unquote(quote(text)) == (text, len(quote(text))), "quote round trip")
            out = Reply().line(cmd.keyword).data("x=", cmd.body or "").line("OK").to_bytes()
            check(out.endswith(b"250 OK\r\n"), "reply shape")
        check(
            reader.buffered <= MAX_LINE + MAX_BUFFER + len(chunk) + 1,
            f"buffered {reader.buffered}",
        )
        if reader.error is not None:
            return


def seeds() -> list[bytes]:
    streams = [
        b'PROTOCOLINFO 1\r\nAUTHENTICATE "secret"\r\nGETINFO version config-text\r\n',
        b"AUTHCHALLENGE SAFECOOKIE d54bf4c877ae474104a8039f168bd9ca\r\n",
        b'SETCONF SocksPort=9050 Log="notice stdout" ExitNodes\r\nRESETCONF Log\r\n',
        b"+LOADCONF\r\nSocksPort 9050\r\n..\r\n.\r\nQUIT\r\n",
        b'SETEVENTS EXTENDED CIRC STREAM BW\nSIGNAL NEWNYM\nGETCONF "a\\"b"\n',
        b'AUTHENTICATE "\\x41\\101\\n\\\\"\r\n',
        b"\x00\x01\xff garbage\r\n\r\n\r\n",
    ]
    return [bytes((c,)) + s for c in (0, 1, 5, 200) for s in streams]


TARGET = Target(
    name="control",
    one_input=one_input,
    seeds=seeds,
    max_len=4096,
    doc=__doc__ or "",
)
