"""Request body parsing that refuses what would otherwise crash the process or a view.

DRF's JSONParser turns malformed JSON into a 400 but lets a RecursionError through: a 64 KiB body of
`[[[[...` nests thousands of levels, the decoder gives up with RecursionError, and the client gets a
500. No API body here needs more than a few levels, so anything deeper than MAX_DEPTH is a 400 too
(a parsed document of a few hundred levels would otherwise still blow the stack later, in a
serializer or in the error renderer).

Two more things JSON allows and nothing downstream can handle are a 400 here: a string holding a lone
surrogate (`"\ud800"`: no UTF-8 encodes it, so a field name echoed into the 400's body crashed the
renderer) and a number too large for a float (`1e999` parses to infinity, stored as the text "inf").

A number with more digits than Python converts to an int (4,300, sys.get_int_max_str_digits) is a 400
whose detail says "number too long": the interpreter's own message named sys.set_int_max_str_digits().

An object naming one key twice (`{"bio": "a", "bio": "b"}`) is a 400 too, at any depth: json keeps the
last value, so what a client, a proxy or a log reader that keeps the first one sees would not be what
was stored.
"""

import codecs
import math

from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

MAX_DEPTH = 32
# The encodings a JSON text may be in (RFC 8259 requires UTF-8; the RFC before it allowed UTF-16 and -32),
# as codecs names them. Any other charset in the Content-Type is a 415: Python knows codecs such as
# rot13 or base64 that are not text encodings at all, and reading a body with one of them failed with a
# TypeError (a 500).
JSON_CHARSETS = {"utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"}
SHOWN_KEY_MAX = 64  # how much of a duplicated key the 400 quotes (a key can be most of a 64 KiB body)


class DuplicateKey(ValueError):
    """An object of the document names a key twice."""


class NumberTooLong(ValueError):
    """An integer of the document has more digits than the interpreter converts."""


def bounded_int(text: str) -> int:
    """json's parse_int: int(text), or NumberTooLong with a plain message when the interpreter refuses
    the conversion (more digits than sys.get_int_max_str_digits(): its message names Python internals)."""
    try:
        return int(text)
    except ValueError:
        raise NumberTooLong("number too long") from None


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: the object as a dict, or DuplicateKey when a key repeats. The key is
    quoted with repr, which escapes a lone surrogate (the renderer could not encode it)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"duplicate key {key[:SHOWN_KEY_MAX]!r}")
            seen.add(key)
    return value


def json_depth(value) -> int:
    """Nesting depth of a parsed JSON document (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in item)
    return deepest


class BoundedJSONParser(JSONParser):
    """JSONParser that answers 400 (ParseError) for documents nested deeper than MAX_DEPTH or naming a
    key twice in one object, and 415 for a compressed body (Content-Encoding other than identity)."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower() if request is not None else ""
        if encoding not in ("", "identity"):  # nothing here decompresses a body: say so instead of misreading it
            raise UnsupportedMediaType(media_type, detail=f"Content-Encoding {encoding!r} is not supported.")
        charset = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        if codecs.lookup(charset).name not in JSON_CHARSETS:  # Django keeps only a charset codecs knows
            raise UnsupportedMediaType(media_type, detail=f"charset {charset[:32]!r} is not supported: send UTF-8.")
        try:
            # JSONParser.parse, plus the hook: it has no way to pass one.
            data = json.load(
                codecs.getreader(charset)(stream),
                parse_constant=json.strict_constant if self.strict else None,
                object_pairs_hook=unique_keys,
                parse_int=bounded_int,
            )
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_depth(data) > MAX_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels")
        refuse_unrepresentable(data)
        return data


def refuse_unrepresentable(value) -> None:
    """Raise ParseError for a key or string with a lone surrogate or a non-finite number anywhere in
    `value` (a parsed, depth-checked document), without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ParseError("JSON parse error - a string holds a lone surrogate (\\ud800-\\udfff)") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise ParseError("JSON parse error - a number is too large") from None
