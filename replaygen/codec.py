"""Codecs turn step results, arguments and signal payloads into stored text and back.

The default is strict JSON: what it cannot store faithfully (NaN, infinities,
non-string dict keys, arbitrary objects) is refused with a reason, never
coerced. It never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from .errors import UsageError

try:
    from _json import make_encoder, make_scanner
except ImportError:  # an interpreter without the C accelerator: json's own functions serve
    make_encoder = make_scanner = None  # type: ignore[assignment,misc]


class Codec(Protocol):
    """Encodes values to text for the store and decodes them back."""

    def encode(self, value: Any) -> str:
        """Return the stored form; raise TypeError or ValueError saying why a value cannot be stored."""
        ...

    def decode(self, text: str) -> Any:
        """Return the value a stored form stands for."""
        ...


_PLAIN = frozenset({str, int, bool, type(None)})
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # built once: dumps() with
# options builds a new encoder per call, and so does encode(): the C one is built here, once.
# No markers (the circular check): _check has refused a value that contains itself already.
_FAST = None if make_encoder is None else make_encoder(
    None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, False)
# json.loads() with its two whitespace scans left out: text the codec wrote has none.
_SCAN = None if make_scanner is None else make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


class _Refused(Exception):
    def __init__(self, error: Exception) -> None:
        self.error, self.path = error, ""


def _check(value: Any) -> None:
    # json.dumps silently turns int keys into strings and accepts NaN; a value must come back
    # as it went in, so refuse what JSON would change. The path is built only on refusal.
    kind = type(value)
    if kind in _PLAIN or (kind is float and math.isfinite(value)):
        return
    items: Any
    if kind is dict or (kind not in (list, tuple) and isinstance(value, dict)):
        for key in value:
            if not isinstance(key, str):
                raise _Refused(TypeError(f"has the key {key!r} ({type(key).__name__}); JSON "
                                         f"object keys must be str"))
        items = value.items()
    elif kind in (list, tuple) or isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, float):  # a subclass (numpy.float64): stored as the float it is
        if math.isfinite(value):
            return
        shown = float.__repr__(value) + ("" if kind is float else f" ({kind.__name__})")
        raise _Refused(ValueError(f"is {shown}; JSON has no NaN or infinity"))
    elif isinstance(value, (str, int)):  # subclasses (enums too) are stored as their base value
        return
    else:
        raise _Refused(TypeError(
            f"is a {type(value).__name__}, which JSON cannot store; use dict, list, str, int, "
            f"float, bool or None (convert it in the step), or give the Interpreter a codec"))
    for key, item in items:
        if type(item) not in _PLAIN:
            try:
                _check(item)
            except _Refused as refused:
                refused.path = f"[{key!r}]{refused.path}"
                raise


class JSONCodec:
    """Strict JSON (the default codec)."""

    def encode(self, value: Any) -> str:
        try:
            _check(value)
        except _Refused as refused:
            raise type(refused.error)(f"the value{refused.path} {refused.error}") from None
        except RecursionError:
            raise ValueError("the value is nested too deeply (or contains itself)") from None
        if _FAST is None or isinstance(value, str):  # a str: encode() goes straight to C
            return _ENCODER.encode(value)
        return "".join(_FAST(value, 0))

    def decode(self, text: str) -> Any:
        if _SCAN is not None:
            try:
                value, end = _SCAN(text, 0)
                if end == len(text):
                    return value
            except (StopIteration, TypeError):
                pass  # not JSON at its first character, or not a str: json.loads says why
        return json.loads(text)


@dataclass
class Payloads:
    """Values encoded by ``codec`` within ``max_payload`` bytes: the largest encoded step
    result, argument list or signal payload. A value over it is refused, saying why; an error
    record is cut until it fits, never refused."""

    codec: Codec
    max_payload: int
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("replaygen"))

    def encode(self, value: Any, what: str, *names: str) -> str:
        """Encode ``value`` within the payload limit, or a UsageError saying why not;
        ``what`` (formatted with ``names``, only on error) names it."""
        try:
            text = self.codec.encode(value)
            size = len(text) if text.isascii() else len(text.encode())
            if size <= self.max_payload:
                return text
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{what.format(*names)} cannot be stored: {exc}") from None
        what = what.format(*names)
        self.log.warning("%s is %d bytes encoded, over the limit of %d", what, size,
                         self.max_payload)
        raise UsageError(f"{what} is {size} bytes encoded, over the limit of {self.max_payload} "
                         f"bytes; keep large data elsewhere and pass a reference (or raise "
                         f"max_payload)")

    def encode_error(self, info: dict[str, Any]) -> str:
        """An error record as text, cut (its traceback, then its message) until it fits."""
        for _ in range(64):
            text = self.codec.encode(info)
            if len(text.encode()) <= self.max_payload:
                break
            info = shrink_error(info)
        return text


def shrink_error(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with its traceback and message halved, saying so: an error that does not fit
    the payload limit is cut until it does, never refused."""
    trace, message = info.get("traceback") or "", info.get("message") or ""
    cut = " [cut to fit max_payload]"
    return {**info, "traceback": cut + trace[-(len(trace) // 2):] if trace else trace,
            "message": message[:len(message) // 2] + cut if len(trace) < 64 else message}


