"""The checks of values read from a backend's JSON."""

from __future__ import annotations

from typing import Any

import pytest

from flask_inference_gateway.core.errors import BackendError
from flask_inference_gateway.upstream.values import count, optional_text, text, vectors


def test_absent_values_have_their_defaults() -> None:
    assert (text(None, "t"), optional_text(None, "r"), optional_text("", "r"), count(None, "c")) \
        == ("", None, None, 0)
    assert (text("a", "t"), optional_text("stop", "r"), count(3, "c")) == ("a", "stop", 3)
    assert vectors([[1, 2.5], []], "v") == [[1, 2.5], []]


@pytest.mark.parametrize(("check", "value"), [
    (text, 5), (text, ["a"]), (optional_text, {}), (count, "3"), (count, -1), (count, True),
    (count, 2.0), (vectors, [["a"]]), (vectors, [5]), (vectors, [[True]]),
])
def test_wrong_types_name_the_field(check: Any, value: Any) -> None:
    with pytest.raises(BackendError, match="'field'"):
        check(value, "field")
