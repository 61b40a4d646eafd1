"""Captured bytes to the text frontends get, kept as UTF-8 bytes (specs/output-sync.md §6).

What a frontend gets is the bytes decoded by an incremental UTF-8 decoder with
``errors="replace"``: a character split across reads is decoded whole, truly invalid bytes
become U+FFFD. The stream message carries that text encoded as UTF-8 again, so for the usual
output (valid UTF-8, mostly ASCII) the bytes read *are* that text: :class:`Utf8Text` returns
them as they are, and decodes only to find an incomplete last character or to replace
invalid bytes.
"""

from __future__ import annotations

import codecs

__all__ = ["REPLACEMENT", "Utf8Text"]

#: U+FFFD (a str), which the decoder puts in place of invalid bytes.
REPLACEMENT = "\ufffd"


class Utf8Text:
    """Incremental: bytes in, valid UTF-8 out, the same text as ``errors="replace"`` decoding.

    ``feed(a) + feed(b) + feed(b"", final=True)`` is the UTF-8 encoding of
    ``(a + b).decode("utf-8", "replace")`` however the input is cut: an incomplete character
    at the end of a read is held back until the next one (or replaced on ``final``).
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes, final: bool = False) -> bytes:
        """The text of ``data`` (after what is held back) that is complete, as UTF-8."""
        decoder = self._decoder
        held = decoder.getstate()[0]
        if not held and data.isascii():  # the usual case: one fast C pass, no copy
            return data
        text = decoder.decode(data, final)
        if not held and REPLACEMENT not in text:
            # Valid UTF-8 up to what is held back now: the text is a prefix of ``data``.
            keep = len(data) - len(decoder.getstate()[0])
            return data if keep == len(data) else data[:keep]
        return text.encode("utf-8")

    def reset(self) -> None:
        """Forget a held partial character (the bytes after it are not its continuation)."""
        self._decoder.reset()

    @property
    def pending(self) -> bool:
        """Whether the start of a character is held back, waiting for its continuation."""
        return bool(self._decoder.getstate()[0])
