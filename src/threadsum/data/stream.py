"""Reading input files in bounded memory: bytes stream in chunks, and a field, string or mail part longer
than a limit is cut while it is read, before anything decodes or parses all of it.

Why by hand: the csv module holds a whole field (4 bytes a character) and its ``field_size_limit``
drops the row and loses its place in the file; ``json.loads`` and the ``email`` parser hold the whole
document, several times over once decoded. None of them can cut one value and go on, so the cutters
below do it on the bytes before those parsers see them, and the parsers then read a bounded input.

A cut value keeps its first ``max_bytes`` bytes (ending at a UTF-8 character boundary, never inside
an escape or a quote pair) followed by a mark that holds the size it had in the file; :func:`uncut`
removes the mark and returns that size, so the reader that meets the value warns about the cut with
the value's real size. Limits are bytes; ``BYTES_PER_CHAR`` turns a character limit into one that
keeps at least as many characters as the limit asks for.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value
from itertools import chain
from typing import IO, Iterable, Iterator, Optional

CHUNK = 1 << 20
"""Bytes read from a file at a time."""
BYTES_PER_CHAR = 16
"""The most bytes one body character can take in a file: 4 bytes of UTF-8 (or a 12-byte JSON surrogate
pair escape), written as quoted-printable (3x) and then base64 (4/3x, Gmail's raw messages)."""
SNIFF_BYTES = 1 << 16
"""Bytes at the start of a file that format detection looks at."""

_MARK = re.compile("\x00\x00cut:([0-9]+)\x00$")


def cut_mark(size: int, json_escaped: bool = False) -> bytes:
    """The bytes that end a cut value: the value's size in the file, in bytes (JSON escapes when the
    value sits in a JSON string). :func:`uncut` reads it back after decoding."""
    if json_escaped:
        return b"\\u0000\\u0000cut:%d\\u0000" % size
    return b"\x00\x00cut:%d\x00" % size


def uncut(value: str) -> tuple[str, Optional[int]]:
    """(``value`` without its cut mark, its size in the file in bytes) for a value that was cut while
    reading; (``value``, None) for any other."""
    if not value.endswith("\x00"):
        return value, None
    m = _MARK.search(value)
    if m is None:
        return value, None
    return value[:m.start()], int(m.group(1))


def utf8_prefix(data: bytes, n: int) -> int:
    """The largest k <= n such that ``data[:k]`` does not end inside a UTF-8 sequence (backs off at
    most 3 bytes, so text in a single-byte charset loses at most 3 bytes more than asked)."""
    k = min(n, len(data))
    back = 0
    while 0 < k < len(data) and back < 3 and (data[k] & 0xC0) == 0x80:
        k -= 1
        back += 1
    return k


def complete_utf8(data: bytes) -> int:
    """The length of ``data`` without a UTF-8 sequence that its last bytes begin and do not finish
    (so a chunk boundary never splits a character before a cut is decided)."""
    for j in range(len(data) - 1, max(-1, len(data) - 4), -1):
        b = data[j]
        if b & 0xC0 == 0x80:
            continue
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return j if len(data) - j < need else len(data)
        break
    return len(data)


def file_chunks(fh: IO[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """The bytes of an open binary file, ``size`` at a time."""
    return iter(lambda: fh.read(size), b"")


class NulFilter:
    """Removes NUL bytes from a stream of chunks and counts them (``removed``)."""

    def __init__(self) -> None:
        self.removed = 0

    def filter(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The chunks without their NUL bytes."""
        for c in chunks:
            if b"\x00" in c:
                self.removed += c.count(b"\x00")
                c = c.replace(b"\x00", b"")
            yield c


# ------------------------------------------------------------------------------------------ CSV
# a whole record (the csv module's excel dialect: ',' delimiter, '"' quotes doubled inside quoted
# fields), for the fast path: a record no longer than the limit cannot hold a field over it. No quote
# may follow a closing quote here: in a chunk that ends inside a quoted field, '"ab""' must not
# match as "ab" + '"' (the slow path reads such rare fields)
_CSV_FIELD = rb'(?:"[^"]*(?:""[^"]*)*"[^,\r\n"]*|[^,\r\n"][^,\r\n]*|)'
_CSV_RECORD = re.compile(_CSV_FIELD + rb"(?:," + _CSV_FIELD + rb")*(?:\r\n|\n|\r)")
_NOT_QUOTE = re.compile(rb'[^"]*')
_NOT_DELIM = re.compile(rb"[^,\r\n]*")
_START, _QUOTED, _UNQUOTED = range(3)


class _Cutter:
    """What both cutters share: the output of one chunk, the current value's size and whether it is
    being dropped, and the cut mark written once where the value ends."""

    json_escaped = False

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.n_cut = 0  # values cut so far
        self._out: list[bytes] = []
        self._size = 0
        self._dropping = False
        self._marked = False

    def _keep(self, piece: bytes, room: int) -> int:
        return utf8_prefix(piece, room)

    def _content(self, piece: bytes, atomic: bool = False) -> int:
        """Pass on the part of ``piece`` (inside one value) that fits; returns the bytes passed on."""
        if not piece:
            return 0
        if self._dropping:
            self._size += len(piece)
            return 0
        room = self.max_bytes - self._size
        self._size += len(piece)
        if len(piece) <= room:
            self._out.append(piece)
            return len(piece)
        keep = 0 if atomic else self._keep(piece, room)
        self._out.append(piece[:keep])
        self._dropping, self._marked = True, False
        self.n_cut += 1
        return keep

    def _mark(self) -> None:
        """Write the cut mark where the value's kept bytes end (once per cut value)."""
        if self._dropping and not self._marked:
            self._out.append(cut_mark(self._size, self.json_escaped))
            self._marked = True

    def _end_value(self) -> None:
        self._mark()
        self._size, self._dropping, self._marked = 0, False, False

    def _take(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def cut(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The stream with every value cut; yields about one output chunk per input chunk."""
        carry = b""
        for chunk in chain(chunks, [None]):
            final = chunk is None
            buf = carry + (chunk or b"")
            end = len(buf) if final else complete_utf8(buf)
            i = self._feed(buf[:end], final)
            carry = buf[i:]
            if final:
                self._finish(carry)
            out = self._take()
            if out:
                self._passed(out)
                yield out

    def _feed(self, buf: bytes, final: bool) -> int:
        """Process ``buf``; returns where the bytes to hold for the next chunk begin."""
        raise NotImplementedError

    def _finish(self, rest: bytes) -> None:
        """The stream ended; ``rest`` is what :meth:`_feed` left unconsumed."""
        self._mark()

    def _passed(self, out: bytes) -> None:
        """``out`` is being passed on (a subclass that counts lines looks at it)."""


class _Breaks:
    """Counts line breaks as the csv module's lines count them (``\r\n``, ``\r``, ``\n``) in bytes
    given in pieces, a ``\r\n`` split between two pieces counted once."""

    def __init__(self, cr: bool = False) -> None:
        self.n = 0
        self.cr = cr  # the last byte seen was '\r'

    def add(self, piece: bytes) -> int:
        if not piece:
            return self.n
        self.n += piece.count(b"\n") + piece.count(b"\r") - piece.count(b"\r\n")
        if self.cr and piece[:1] == b"\n":
            self.n -= 1
        self.cr = piece[-1:] == b"\r"
        return self.n


class CsvFieldCutter(_Cutter):
    """Cuts every field of a CSV byte stream (the csv module's default dialect) to ``max_bytes``.

    The line breaks inside what is cut away are not passed on, so the csv reader counts fewer lines
    than the file has: :meth:`file_line` turns the reader's line number back into the file's.
    """

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self._state = _START
        self._record_start = True
        self._lines = _Breaks()  # of everything passed on
        self._field_in = _Breaks()  # of the current field's content, as in the file
        self._field_out = _Breaks()  # of the current field's content, as passed on
        self._cut_line = 0
        self.cuts: list[tuple[int, int]] = []  # (reader's line where a cut began, file lines it dropped)

    def file_line(self, out_line: int) -> int:
        """The file's line number for the reader's line ``out_line``."""
        return out_line + sum(d for at, d in self.cuts if at <= out_line)

    def _passed(self, out: bytes) -> None:
        self._lines.add(out)

    def _keep(self, piece: bytes, room: int) -> int:
        k = utf8_prefix(piece, room)
        return k - 1 if k and piece[k - 1:k + 1] == b"\r\n" else k  # never between '\r' and '\n'

    def _content(self, piece: bytes, atomic: bool = False) -> int:
        was = self._dropping
        kept = super()._content(piece, atomic)
        self._field_in.add(piece)
        self._field_out.add(piece[:kept])
        if self._dropping and not was:
            pending = _Breaks(self._lines.cr)
            self._cut_line = self._lines.n + pending.add(b"".join(self._out)) + 1
        return kept

    def _end_value(self) -> None:
        dropped = self._field_in.n - self._field_out.n
        if self._dropping and dropped:
            self.cuts.append((self._cut_line, dropped))
        self._field_in, self._field_out = _Breaks(), _Breaks()
        super()._end_value()

    def _feed(self, buf: bytes, final: bool) -> int:
        i, n, out = 0, len(buf), self._out
        while i < n:
            st = self._state
            if st == _START and self._record_start:
                m = _CSV_RECORD.match(buf, i)
                if m is not None and m.end() - i <= self.max_bytes and (final or m.end() < n or buf[n - 1] != 0x0D):
                    out.append(m.group())
                    i = m.end()
                    continue
                if m is None and not final and n - i <= self.max_bytes:
                    return i  # an unfinished record that may still fit: wait for more bytes
                self._record_start = False  # a long record: field by field
            if st == _START:
                if buf[i] == 0x22:
                    out.append(b'"')
                    self._size, self._state = 1, _QUOTED
                    i += 1
                else:
                    self._state = _UNQUOTED
            elif st == _QUOTED:
                j = _NOT_QUOTE.match(buf, i).end()
                self._content(buf[i:j])
                i = j
                if i == n:
                    break
                if i + 1 == n and not final:
                    return i  # a quote at the end: is it half of '""'?
                if buf[i + 1:i + 2] == b'"':
                    self._content(b'""', atomic=True)  # an escaped quote is never split
                    i += 2
                else:
                    self._mark()
                    out.append(b'"')
                    self._state = _UNQUOTED
                    i += 1
            else:
                j = _NOT_DELIM.match(buf, i).end()
                self._content(buf[i:j])
                i = j
                if i == n:
                    break
                if buf[i] == 0x2C:
                    self._end_value()
                    out.append(b",")
                    self._state = _START
                    i += 1
                    continue
                if buf[i] == 0x0D and i + 1 == n and not final:
                    return i  # '\r' at the end: is it '\r\n'?
                width = 2 if buf[i:i + 2] == b"\r\n" else 1
                self._end_value()
                out.append(buf[i:i + width])
                self._state, self._record_start = _START, True
                i += width
        return i


# ----------------------------------------------------------------------------------------- JSON
_JSON_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')  # a string's content up to its closing quote
def _unfinished_string(buf: bytes, i: int) -> int:
    """Where the string that ``buf`` leaves open begins (``len(buf)`` when none), for JSON from ``i``
    outside any string. Outside strings JSON holds no backslash and every quote that an even run of
    backslashes precedes opens or closes a string, so the parity of those quotes tells whether one is
    left open: counted with ``bytes.count``, without walking the escapes."""
    n = len(buf)
    escaped = buf.count(b'\\"', i)  # a quote after one backslash or more; after an even run it is not escaped
    j = buf.find(b'\\\\"', i)
    while j >= 0:  # quotes after two backslashes or more are rare: look at the run of each
        q = k = j + 2
        while k > i and buf[k - 1] == 0x5C:
            k -= 1
        escaped -= (q - k) % 2 == 0
        j = buf.find(b'\\\\"', q + 1)
    if (buf.count(b'"', i) - escaped) % 2 == 0:
        return n
    end = n
    while True:  # the last quote that is not escaped opens the unfinished string
        j = buf.rfind(b'"', i, end)
        k = j
        while k > i and buf[k - 1] == 0x5C:
            k -= 1
        if (j - k) % 2 == 0:
            return j
        end = j
_JSON_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\.")
_ESCAPE_ROOM = 12  # the longest escape: a surrogate pair, \\uXXXX\\uXXXX


class JsonStringCutter(_Cutter):
    """Cuts every string of a JSON (or JSON lines) byte stream to ``max_bytes`` of its escaped form.
    A string holds no raw newline, so line numbers stay those of the file."""

    json_escaped = True

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self._in_string = False

    def _keep(self, piece: bytes, room: int) -> int:
        k = utf8_prefix(piece, room)
        for m in _JSON_ESCAPE.finditer(piece, 0, k + _ESCAPE_ROOM):
            if m.start() >= k:
                break
            if m.end() > k:
                return m.start()  # never inside an escape (a surrogate pair counts as one)
        return k

    def _finish(self, rest: bytes) -> None:
        self._out.append(rest)  # bytes after the last value (no string is open at the end)
        self._mark()

    def _feed(self, buf: bytes, final: bool) -> int:
        i, n, out = 0, len(buf), self._out
        while i < n:
            if not self._in_string:
                if n - i <= self.max_bytes:
                    # fast path: no string that ends in these bytes can be over the limit, so pass on
                    # everything up to a string that runs past them
                    j = _unfinished_string(buf, i)
                    out.append(buf[i:j])
                    i = j
                    if i == n:
                        break
                j = buf.find(b'"', i)
                if j < 0:
                    out.append(buf[i:])
                    return n
                out.append(buf[i:j + 1])
                self._in_string, self._size = True, 0
                i = j + 1
                continue
            j = _JSON_STRING_REST.match(buf, i).end()
            if j < n and buf[j] == 0x22:  # the whole rest of the string is here
                self._content(buf[i:j])
                self._end_value()
                out.append(b'"')
                self._in_string = False
                i = j + 1
                continue
            if final:  # a string the file never closes: cut like any other
                self._content(buf[i:])
                return n
            # the string goes on in the next chunk: hold back an escape that may be unfinished (j < n
            # only at a lone backslash at the very end); escapes found from i are aligned, since the
            # content between them holds no backslash
            hold = j
            for m in _JSON_ESCAPE.finditer(buf, i, j):
                if m.end() > j - _ESCAPE_ROOM:  # the first escape near the end, and all after it
                    hold = m.start()
                    break
            self._content(buf[i:hold])
            return hold
        return i


# ----------------------------------------------------------------------------------------- text
def text_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines of a text given in chunks, split as a file opened with ``newline=""`` splits them (at
    ``\\n``, ``\\r\\n`` and ``\\r``, endings kept): what the csv module expects. The splitting is
    ``io.StringIO``'s, on the complete lines of each chunk."""
    rest = ""
    for chunk in chunks:
        buf = rest + chunk
        # complete lines end at the last '\n' (a '\r' at the very end may be half of '\r\n')
        end = buf.rfind("\n") + 1 or buf.rfind("\r", 0, len(buf) - 1) + 1
        if end:
            yield from io.StringIO(buf[:end], newline="")
        rest = buf[end:]
    if rest:
        yield from io.StringIO(rest, newline="")


# ----------------------------------------------------------------------------------------- mail
@dataclass
class PartCut:
    """A part of a mail message cut while reading."""

    content_type: str
    """The part's MIME type (``text/plain``, ...); ``headers`` for a header block, ``preamble`` for the
    text between a multipart's header and its first part (or after its last)."""
    disposition: Optional[str]
    """Its Content-Disposition (``attachment``, ``inline``) or None."""
    size: int
    """Bytes the part had in the file."""


# the email package's rule for a header line (feedparser.headerRE): the envelope 'From ' line, a
# field name and colon, or a folded continuation
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")


def bounded_lines(fh: IO[bytes], max_len: int = CHUNK) -> Iterator[tuple[bytes, bool]]:
    """The lines of an open binary file as (piece, starts a line): a line longer than ``max_len``
    comes in pieces, so no piece is longer. Pieces keep their newline."""
    start = True
    while True:
        piece = fh.readline(max_len)
        if not piece:
            return
        yield piece, start
        start = piece.endswith(b"\n")


class MessageCutter:
    """One raw mail message, fed line by line, with each MIME part's content cut to ``max_part_bytes``.

    A message no longer than the limit is passed on as is. A longer one is followed through its
    MIME structure (header blocks, ``multipart`` boundaries, nested or not) so that every header
    block and boundary line is kept and only the content of a part over the limit is cut (at a line
    end added after it, so the next boundary still starts a line). What was cut is in ``cuts``.
    """

    def __init__(self, max_part_bytes: int):
        self.max = max_part_bytes
        self.cuts: list[PartCut] = []
        self._pending: Optional[list[tuple[bytes, bool]]] = []  # until the message is over the limit
        self._total = 0
        self._out: list[bytes] = []
        self._bounds: list[bytes] = []  # b"--" + boundary of each open multipart, outermost first
        self._headers: Optional[list[bytes]] = []  # the header block being read; None inside a body
        self._part: tuple[str, Optional[str]] = ("headers", None)
        self._kept = self._size = 0

    def add(self, piece: bytes, line_start: bool = True) -> None:
        """Add the next piece of the message (see :func:`bounded_lines`)."""
        if self._pending is not None:
            self._pending.append((piece, line_start))
            self._total += len(piece)
            if self._total <= self.max:
                return
            pending, self._pending = self._pending, None
            for p, s in pending:
                self._add(p, s)
            return
        self._add(piece, line_start)

    def finish(self) -> tuple[bytes, list[PartCut]]:
        """The message as kept, and what was cut."""
        if self._pending is not None:
            return b"".join(p for p, _ in self._pending), []
        self._end_part()
        return b"".join(self._out), self.cuts

    def _add(self, piece: bytes, line_start: bool) -> None:
        if self._headers is not None:
            blank = line_start and not piece.strip()
            if line_start and (blank or not _HEADER_LINE.match(piece)):
                self._end_headers()
                if blank:
                    self._out.append(piece)
                    return
            else:
                if self._keep(piece) and len(self._headers) < 10_000:
                    self._headers.append(piece)
                return
        if line_start and self._bounds and piece.startswith(b"--") and self._boundary(piece):
            return
        self._keep(piece)

    def _keep(self, piece: bytes) -> bool:
        """Pass on what fits of ``piece`` in the current part; True when all of it did."""
        self._size += len(piece)
        room = self.max - self._kept
        if len(piece) <= room:
            self._out.append(piece)
            self._kept += len(piece)
            return True
        if room > 0:
            k = utf8_prefix(piece, room)
            self._out.append(piece[:k])
            self._kept = self.max
        return False

    def _end_part(self) -> None:
        if self._size > self._kept:
            self._out.append(b"\n")
            self.cuts.append(PartCut(self._part[0], self._part[1], self._size))
        self._kept = self._size = 0

    def _end_headers(self) -> None:
        self._end_part()
        h = BytesHeaderParser(policy=compat32).parsebytes(b"".join(self._headers or []) + b"\n")
        self._headers = None
        boundary = h.get_param("boundary") if h.get_content_maintype() == "multipart" else None
        if boundary:
            self._bounds.append(b"--" + collapse_rfc2231_value(boundary).encode("ascii", "surrogateescape"))
            self._part = ("preamble", None)
        else:
            self._part = (h.get_content_type(), h.get_content_disposition())

    def _boundary(self, piece: bytes) -> bool:
        line = piece.rstrip(b"\r\n\t ")
        for depth in range(len(self._bounds) - 1, -1, -1):
            b = self._bounds[depth]
            if line == b or line == b + b"--":
                self._end_part()
                self._out.append(piece)
                if line == b:  # the next part's header block follows
                    del self._bounds[depth + 1:]
                    self._headers, self._part = [], ("headers", None)
                else:  # the multipart ends: its epilogue follows
                    del self._bounds[depth:]
                    self._part = ("preamble", None)
                return True
        return False


def cut_message(data: bytes, max_part_bytes: int) -> tuple[bytes, list[PartCut]]:
    """A raw message in memory with each MIME part cut to ``max_part_bytes`` (``MessageCutter``)."""
    cutter = MessageCutter(max_part_bytes)
    for piece, start in bounded_lines(io.BytesIO(data)):
        cutter.add(piece, start)
    return cutter.finish()
