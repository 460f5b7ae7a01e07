"""Turn a stream of token byte pieces into text without ever splitting a character.

A token's piece is raw bytes, and one UTF-8 character (an emoji, a CJK ideograph) is often
spread over two or more tokens. Decoding each piece on its own would emit U+FFFD halves, so
the decoder keeps an incomplete trailing sequence back until the next piece completes it.
"""

from __future__ import annotations

import codecs


class IncrementalDecoder:
    """UTF-8 decoder for generated token pieces: `push` each piece, `flush` at the end.

    Work per `push` is proportional to the piece (the codec buffers at most the 3 bytes of
    an unfinished character), so streaming stays O(1) per token however long the output is.
    Bytes that can never be valid UTF-8 (a model may emit any byte token) become U+FFFD
    instead of raising.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        """Return the text completed by `piece`; a partial character at its end is held back."""
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """Return what is still held back, an unfinished character becoming U+FFFD, and reset."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
