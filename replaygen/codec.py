"""Codecs turn step results, arguments and signal payloads into stored text and back.

The default is strict JSON: what it cannot store faithfully (NaN, infinities,
non-string dict keys, arbitrary objects) is refused with a reason, never
coerced. It never unpickles anything.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol


class Codec(Protocol):
    """Encodes values to text for the store and decodes them back."""

    def encode(self, value: Any) -> str:
        """Return the stored form; raise TypeError or ValueError saying why a value cannot be stored."""
        ...

    def decode(self, text: str) -> Any:
        """Return the value a stored form stands for."""
        ...


def _check(value: Any, path: str) -> None:
    # json.dumps silently turns int keys into strings and accepts NaN; a value
    # must come back as it went in, so refuse what JSON would change.
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}; JSON has no NaN or infinity")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{path} has the key {key!r} ({type(key).__name__}); JSON object keys must be str"
                )
            _check(item, f"{path}[{key!r}]")
    else:
        raise TypeError(
            f"{path} is a {type(value).__name__}, which JSON cannot store; use dict, list, str, "
            f"int, float, bool or None (convert it in the step), or give the Interpreter a codec"
        )


class JSONCodec:
    """Strict JSON (the default codec)."""

    def encode(self, value: Any) -> str:
        try:
            _check(value, "the value")
        except RecursionError:
            raise ValueError("the value is nested too deeply (or contains itself)") from None
        return json.dumps(value, allow_nan=False, separators=(",", ":"))

    def decode(self, text: str) -> Any:
        return json.loads(text)
