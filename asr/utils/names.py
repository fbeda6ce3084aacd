"""File names as the OS gives them, in line-oriented outputs and inputs.

A POSIX file name is any bytes but ``/`` and NUL: it may hold a TAB, a newline or bytes that are not UTF-8. Python
holds such a name as a ``surrogateescape`` string (``sys.argv``, ``os.listdir``, :func:`read_path_list`), which
opens the right file but cannot be printed as UTF-8, and a TAB or newline in it would make a ``path<TAB>text`` line
ambiguous. The choices made here:

- TSV columns (``asr-transcribe``'s ``path<TAB>text`` and ``path<TAB>error`` lines) hold the name **escaped**, as
  ``ls --quoting-style=escape`` and Python's ``unicode_escape`` would: ``\\`` -> ``\\\\``, TAB -> ``\\t``, newline ->
  ``\\n``, carriage return -> ``\\r``, any other C0 control or DEL -> ``\\xNN``, a C1 control (U+0080-U+009F) ->
  ``\\uNNNN``, and every byte that is not UTF-8 -> ``\\xNN`` of that byte (0x80-0xFF). Every other character is written as it is (UTF-8). :func:`unescape_field`
  gives the name back exactly (``os.fsencode`` of it gives the OS's bytes).
- JSON lines stay unambiguous by JSON's own quoting; a name that is not UTF-8 is written with JSON's ``\\udcNN``
  escapes (:func:`json_line`), which ``json.loads`` turns back into the ``surrogateescape`` string.
- List files (``--list``) are read as bytes, each line decoded with ``surrogateescape``: a line that is not UTF-8
  names the file whose name has those bytes (never a traceback).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["escape_field", "unescape_field", "json_line", "read_path_list"]

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
# What escape_field rewrites: backslash, C0 controls, DEL, C1 controls, and surrogateescape'd bytes (U+DC80-U+DCFF).
_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_LINE_BREAKERS = re.compile("[\x80-\x9f\u2028\u2029]")
_ESCAPE = re.compile(r"\\(\\|t|n|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    if 0x80 <= o <= 0x9F:
        return f"\\u{o:04x}"
    return f"\\x{o - 0xDC00 if o >= 0xDC80 else o:02x}"


def escape_field(name: str) -> str:
    """``name`` (a path, possibly a ``surrogateescape`` string) as one TSV field: no TAB, newline or other control
    character, valid UTF-8; see the module docstring for the escapes. ``unescape_field(escape_field(s)) == s``."""
    return _SPECIAL.sub(_escape_char, name)


def unescape_field(field: str) -> str:
    """The inverse of :func:`escape_field`: ``\\xNN`` of 0x80-0xFF gives back the raw byte (as the
    ``surrogateescape`` character U+DCNN), of 0x00-0x7F the control character; ``\\uNNNN`` the character.
    Raises ``ValueError`` on a backslash that starts no known escape."""
    out: list[str] = []
    pos = 0
    for m in _ESCAPE.finditer(field):
        if "\\" in field[pos:m.start()]:
            raise ValueError(f"bad escape in {field!r} at {field.index(chr(92), pos)}")
        out.append(field[pos:m.start()])
        e = m.group(1)
        if e[0] == "u":
            out.append(chr(int(e[1:], 16)))
        elif e[0] == "x":
            v = int(e[1:], 16)
            out.append(chr(v) if v < 0x80 else chr(0xDC00 + v))
        else:
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[e])
        pos = m.end()
    if "\\" in field[pos:]:
        raise ValueError(f"bad escape in {field!r} at {field.index(chr(92), pos)}")
    out.append(field[pos:])
    return "".join(out)


def json_line(obj: Any) -> str:
    """One JSON line for ``obj``: UTF-8 text as it is (``ensure_ascii=False``), unless some string holds
    ``surrogateescape`` characters (a file name that is not UTF-8), in which case the line is ASCII with ``\\uXXXX``
    escapes, so it can always be written to a UTF-8 stream and ``json.loads`` gives the same strings back. C1 controls
    and U+2028/U+2029 are ``\\uXXXX``-escaped too: the line never splits under ``str.splitlines()``."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True)
    # JSON escapes only C0 controls; C1 controls and U+2028/U+2029 break lines for str.splitlines() and some editors.
    return _LINE_BREAKERS.sub(lambda m: f"\\u{ord(m.group(0)):04x}", line)


def read_path_list(list_file: str) -> list[str]:
    """Paths listed in ``list_file`` (``"-"``: standard input), one per line (``\\n``; a trailing ``\\r`` is whitespace); blank lines and ``#`` comments skipped,
    surrounding whitespace stripped. Read as bytes and decoded as UTF-8 with ``surrogateescape``: a line that is not
    UTF-8 gives the path whose OS name has those bytes. Raises ``OSError`` if the file cannot be read."""
    if list_file != "-":
        text = Path(list_file).read_bytes().decode("utf-8", "surrogateescape")
    elif hasattr(sys.stdin, "buffer"):
        text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    else:  # a text stream without bytes underneath (io.StringIO in tests, some embedders)
        text = sys.stdin.read()
    lines = text.split("\n")  # not splitlines(): \x0b, \x1c, U+2028 ... are name characters
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
