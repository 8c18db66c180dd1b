"""The JSON codec stores subclasses of its plain types (numpy.float64, str and int enums, ...)
as the base value they are, byte for byte, and refuses what JSON cannot hold for the true
reason (issue 15)."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest

from replaygen.codec import JSONCodec

codec = JSONCodec()


class F(float):  # what numpy.float64 is to the codec
    def __repr__(self) -> str:
        return f"F({float(self)})"


class I(int):  # noqa: E742
    def __repr__(self) -> str:
        return "I!"


class S(str):
    def __str__(self) -> str:
        return "not the value"


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize("value, base", [
    (F(1.5), 1.5), (F(-0.0), -0.0), (F(1e300), 1e300), (I(7), 7), (S("x"), "x"),
    (Colour.RED, "red"), (Level.HIGH, 3), (True, True), (False, False),
])
def test_a_subclass_is_stored_exactly_as_its_base_value(value: Any, base: Any) -> None:
    assert codec.encode(value) == codec.encode(base)
    assert codec.encode({"k": [value]}) == codec.encode({"k": [base]})
    back = codec.decode(codec.encode(value))
    assert back == base and type(back) is type(base)


def test_bool_stays_a_bool_and_not_an_int() -> None:
    assert (codec.encode(True), codec.encode(1)) == ("true", "1")


@pytest.mark.parametrize("bad", [F("nan"), F("inf"), F("-inf")])
def test_a_float_subclass_that_is_not_finite_is_refused_for_that_reason(bad: float) -> None:
    with pytest.raises(ValueError, match=r"JSON has no NaN or infinity") as caught:
        codec.encode({"x": [bad]})
    assert "['x'][0]" in str(caught.value) and "(F)" in str(caught.value)
    assert ("nan" if math.isnan(bad) else "inf") in str(caught.value)


def test_a_float_subclass_as_a_dict_key_is_still_refused() -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        codec.encode({F(1.5): 1})


@pytest.mark.parametrize("value", [
    0, -7, 2**70, 1.5, -0.0, 1e-310, True, None, "", "é\u2028\"\\\n", [], {}, [1, [2, [3]]],
    {"a": {"b": [None, False, 0.1]}, "ü": "ß"}, (1, "t"), Colour.RED, Level.HIGH, F(2.5),
])
def test_the_stored_text_is_what_strict_json_dumps_writes(value: Any) -> None:
    # The codec encodes with a C encoder built once; its text must be json.dumps's, byte for
    # byte, or values journaled before and after would compare unequal.
    import json
    assert codec.encode(value) == json.dumps(value, allow_nan=False, separators=(",", ":"))


@pytest.mark.parametrize("make", [lambda: (a := [1], a.append(a))[0],
                                  lambda: (d := {"k": 1}, d.__setitem__("self", d))[0]])
def test_a_value_that_contains_itself_is_refused_saying_so(make: Any) -> None:
    with pytest.raises(ValueError, match=r"nested too deeply \(or contains itself\)"):
        codec.encode(make())


@pytest.mark.parametrize("text", ["5", " 5", "5 ", '"x"', "[1, 2]", '{"a": [null, true]}',
                                  "NaN", "-Infinity", "\t{}\n", "1e400"])
def test_decode_reads_what_json_loads_reads(text: str) -> None:
    # The scanner is called directly (no whitespace scans): anything else goes to json.loads.
    import json
    got, want = codec.decode(text), json.loads(text)
    assert got == want or (got != got and want != want)  # NaN is itself, not equal


@pytest.mark.parametrize("text", ["", "5x", "[1,", "\ufeff5", "{'a': 1}", "nul"])
def test_decode_of_text_that_is_not_json_raises_json_s_own_error(text: str) -> None:
    import json
    with pytest.raises(json.JSONDecodeError) as caught:
        codec.decode(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    assert str(caught.value) == str(expected.value)
