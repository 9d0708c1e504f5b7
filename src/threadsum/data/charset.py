"""The one decoding rule for bytes of unknown or doubtful charset (mail parts, quoted-printable escapes).

Order (issue 14): the declared charset, strictly; then UTF-8; then charset-normalizer's best guess
among the common mail charsets (``COMMON_CHARSETS``); then cp1252, where the five bytes it leaves
undefined fall back to Latin-1. Only bytes that decode in none of them can produce U+FFFD, and
Latin-1 decodes every byte, so no U+FFFD comes out of this module at all.

charset-normalizer is held to ``COMMON_CHARSETS`` because on short texts its unrestricted guess is
often an exotic code page (``Jürgen`` in cp1252 came back as cp775 ``J³rgen``); within the list
it picks the right script.
"""
from __future__ import annotations

import codecs
from typing import Optional

MAX_CONTROL_SHARE = 0.01
"""Share of control bytes (C0 other than tab/newline/CR/FF/ESC, and DEL) above which input is
binary. Text in any common charset has none; 20 kB of random bytes has ~11 %."""
BINARY_SAMPLE_BYTES = 65536
"""Bytes at the start of a file that :func:`control_share` looks at."""
_TEXT_CONTROLS = b"\t\n\r\x0c\x1b"


def control_share(data: bytes) -> float:
    """Share of control bytes in the first :data:`BINARY_SAMPLE_BYTES` bytes of ``data`` (0.0 for none)."""
    sample = data[:BINARY_SAMPLE_BYTES]
    n = sum(sample.count(bytes([b])) for b in range(32) if bytes([b]) not in _TEXT_CONTROLS) + sample.count(b"\x7f")
    return n / max(1, len(sample))


def looks_binary(data: bytes) -> bool:
    """Whether ``data`` is not text or mail in any charset: more than :data:`MAX_CONTROL_SHARE` control bytes."""
    return control_share(data) > MAX_CONTROL_SHARE


COMMON_CHARSETS = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257",
                   "iso8859_15", "koi8_r", "gb18030", "big5", "shift_jis", "euc_jp", "euc_kr")


def _known(charset: Optional[str]) -> Optional[str]:
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip('"').lower()).name
    except LookupError:
        return None


def _latin1_fallback(exc: UnicodeDecodeError) -> tuple[str, int]:
    return exc.object[exc.start:exc.end].decode("latin-1"), exc.end


# cp1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined: those become their Latin-1 code points
codecs.register_error("threadsum-latin1", _latin1_fallback)


def _cp1252(data: bytes) -> str:
    return data.decode("cp1252", errors="threadsum-latin1")


def _cp1252_fallback(exc: UnicodeDecodeError) -> tuple[str, int]:
    return _cp1252(exc.object[exc.start:exc.end]), exc.end


codecs.register_error("threadsum-cp1252", _cp1252_fallback)


def decode_utf8_or_cp1252(data: bytes) -> tuple[str, Optional[int]]:
    """A data file's bytes (CSV, JSON, JSONL: no declared charset) as UTF-8, each byte that is not
    valid UTF-8 read as cp1252 (exports often mix the two: ``caf\\xe9`` -> ``café``). A leading BOM is
    dropped. Returns (text, offset of the first invalid byte or None). Never raises; no U+FFFD."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(codecs.BOM_UTF8) else 0
        # the utf-8-sig codec counts from after the BOM; the offset reported is the file's
        return data[bom:].decode("utf-8", errors="threadsum-cp1252"), exc.start + bom


def decode_bytes(data: bytes, declared: Optional[str] = None, detect: bool = True) -> tuple[str, Optional[str]]:
    """Decode ``data`` (bytes of one text) by the rule above.

    Args:
        data: the raw bytes.
        declared: the charset the source declares (a MIME ``charset`` parameter), or None.
        detect: whether to ask charset-normalizer before cp1252 (off for a few bytes of a
            quoted-printable escape run, where detection has nothing to go on).
    Returns:
        (text, note): ``note`` is None when the declared charset (or, with none declared, UTF-8 or
        plain ASCII) decoded the bytes; otherwise a sentence saying what was used instead, for the
        caller's counted warning. Never raises.
    """
    codec = _known(declared)
    if codec is not None:
        try:
            return data.decode(codec), None
        except UnicodeDecodeError:
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if codec is None and (not declared or data.isascii()):
            return text, None
        return text, _note(declared, codec, "utf-8")
    if detect:
        from charset_normalizer import from_bytes

        best = from_bytes(data, cp_isolation=list(COMMON_CHARSETS)).best()
        if best is not None:
            return str(best), _note(declared, codec, best.encoding)
    return _cp1252(data), _note(declared, codec, "cp1252")


def _note(declared: Optional[str], codec: Optional[str], used: str) -> str:
    if not declared:
        return f"no charset declared and the bytes are not UTF-8; read as {used}"
    if codec is None:
        return f"unknown charset {declared!r}; read as {used}"
    return f"bytes do not decode as the declared charset {declared!r}; read as {used}"


class Utf8OrCp1252Decoder:
    """:func:`decode_utf8_or_cp1252` for bytes that come in chunks (a file read in a stream): the same
    text as decoding the whole at once, a sequence split between chunks included. ``first_bad`` is
    the offset of the first byte that is not UTF-8 (counted from the start of the stream), or None."""

    def __init__(self) -> None:
        self.first_bad: Optional[int] = None
        self._pending = b""
        self._offset = 0  # bytes of the stream before _pending
        self._started = False

    def decode(self, data: bytes, final: bool = False) -> str:
        """The text of ``data`` (and of bytes held back from the chunk before); ``final`` on the last."""
        buf = self._pending + data
        if not self._started:
            if len(buf) < len(codecs.BOM_UTF8) and not final and codecs.BOM_UTF8.startswith(buf):
                self._pending = buf
                return ""
            self._started = True
            if buf.startswith(codecs.BOM_UTF8):
                buf = buf[len(codecs.BOM_UTF8):]
                self._offset += len(codecs.BOM_UTF8)
        try:
            text, used = codecs.utf_8_decode(buf, "strict", final)
        except UnicodeDecodeError as exc:
            if self.first_bad is None:
                self.first_bad = self._offset + exc.start
            text, used = codecs.utf_8_decode(buf, "threadsum-cp1252", final)
        self._pending = buf[used:]
        self._offset += used
        return text
