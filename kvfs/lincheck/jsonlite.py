"""The small part of JSON the history text format needs: arrays, strings, numbers, literals.

The pure packages (``tests/test_raft_purity.py``) may import only a short list of
computation-only standard modules, which does not include :mod:`json`; this module encodes
and parses the subset the format uses.  Every line it writes is valid JSON, so other tools
can read saved histories; it parses what it writes and ordinary hand-edited lines (any
whitespace, ``\\uXXXX`` escapes, surrogate pairs), and rejects objects, trailing text and
non-finite numbers with ValueError.
"""

from __future__ import annotations

import math

Value = None | bool | int | float | str | list["Value"]

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
              "t": "\t"}
_NUMBER_CHARS = frozenset("+-0123456789.eE")


def dumps(value: object) -> str:
    """``value`` (None, bool, int, finite float, str, or lists/tuples of them) as JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:  # outside the basic plane: a surrogate pair, as JSON spells it
            c = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}")
    out.append('"')
    return "".join(out)


def loads(text: str) -> Value:
    """Parse one JSON value (no objects) that makes up all of ``text``."""
    p = _Parser(text)
    value = p.value()
    p.skip()
    if p.i != len(text):
        raise ValueError(f"unexpected text at column {p.i + 1}")
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def value(self) -> Value:
        self.skip()
        if self.i >= len(self.s):
            raise ValueError("unexpected end of text")
        c = self.s[self.i]
        if c == "[":
            return self.array()
        if c == '"':
            return self.string()
        for word, v in (("null", None), ("true", True), ("false", False)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return v
        if c in _NUMBER_CHARS:
            return self.number()
        raise ValueError(f"unexpected {c!r} at column {self.i + 1}")

    def array(self) -> list[Value]:
        self.i += 1  # "["
        items: list[Value] = []
        self.skip()
        if self.s.startswith("]", self.i):
            self.i += 1
            return items
        while True:
            items.append(self.value())
            self.skip()
            c = self.s[self.i:self.i + 1]
            self.i += 1
            if c == "]":
                return items
            if c != ",":
                raise ValueError(f"expected ',' or ']' at column {self.i}")

    def string(self) -> str:
        self.i += 1  # the opening quote
        out: list[str] = []
        s = self.s
        while True:
            if self.i >= len(s):
                raise ValueError("unterminated string")
            c = s[self.i]
            self.i += 1
            if c == '"':
                return "".join(out)
            if c != "\\":
                out.append(c)
                continue
            e = s[self.i:self.i + 1]
            self.i += 1
            if e in _UNESCAPES:
                out.append(_UNESCAPES[e])
            elif e == "u":
                code = self.hex4()
                if 0xD800 <= code < 0xDC00 and s.startswith("\\u", self.i):
                    self.i += 2
                    low = self.hex4()
                    if not 0xDC00 <= low < 0xE000:
                        raise ValueError(f"bad surrogate pair before column {self.i}")
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                out.append(chr(code))
            else:
                raise ValueError(f"bad escape \\{e} at column {self.i}")

    def hex4(self) -> int:
        digits = self.s[self.i:self.i + 4]
        if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError(f"bad \\u escape at column {self.i}")
        self.i += 4
        return int(digits, 16)

    def number(self) -> int | float:
        j = self.i
        while j < len(self.s) and self.s[j] in _NUMBER_CHARS:
            j += 1
        token = self.s[self.i:j]
        self.i = j
        if any(c in token for c in ".eE"):
            x = float(token)  # ValueError on malformed numbers
            if not math.isfinite(x):
                raise ValueError(f"{token} is out of range")
            return x
        return int(token)
