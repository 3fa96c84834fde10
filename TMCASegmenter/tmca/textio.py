"""Reading the text files users give (reports, report tables) in the encodings editors save.

UTF-8 (with or without a byte-order mark) and UTF-16/UTF-32 with a byte-order mark are read as
such; other bytes are Windows-1252, else Latin-1 (every byte is a Latin-1 character), which is what
Western European editors save when they do not save UTF-8. Text with control characters other than
tabs, line and page breaks (NUL bytes of a binary file, UTF-16 without a byte-order mark) is not
text and is refused.
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

from tmca.errors import TMCAError

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)  # UTF-32 LE starts with the UTF-16 LE mark: test it first
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def decode_text(data: bytes) -> str | None:
    """The text of ``data`` (see the module docstring), or None when it is not text."""
    text = _decoded(data)
    return text if text is not None and not _CONTROL.search(text) else None


def _decoded(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return None
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # every byte is a Latin-1 character


def read_text_file(path: str | os.PathLike, what: str = "text file") -> str:
    """The text of the file at ``path``; TMCAError naming ``what`` when it is missing, unreadable or not text."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise TMCAError(f"{what} not found: {source}; check the path") from None
    except OSError as error:
        raise TMCAError(f"cannot read {what} {source}: {error.strerror or error}; check the file's permissions") from None
    text = decode_text(data)
    if text is None:
        raise TMCAError(f"cannot read {what} {source}: it is not a text file; save it as UTF-8 text")
    return text
