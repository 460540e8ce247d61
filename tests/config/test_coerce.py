"""coerce_value: the type checker behind configs and model kwargs."""

from typing import Any, Literal

import pytest

from medattn.config import coerce_value
from medattn.errors import ConfigError


@pytest.mark.parametrize("value,annotation,expected", [
    (3, int, 3),
    (3, float, 3.0),
    (True, bool, True),
    ("a", str, "a"),
    (None, int | None, None),
    ([1, 2], list[int], [1, 2]),
    ((1, 2), tuple[int, ...], [1, 2]),
    ([1, 2.5], tuple[float, float], [1.0, 2.5]),
    ({"a": 1}, dict[str, int], {"a": 1}),
    ("median", list[float] | Literal["median"] | None, "median"),
    ([1, 2], list[float] | Literal["median"] | None, [1.0, 2.0]),
    ({"x": [1]}, dict[str, Any], {"x": [1]}),
    ("1e-4", float, 1e-4),
    ("3E2", float, 300.0),
])
def test_accepts(value, annotation, expected):
    assert coerce_value(value, annotation, "k") == expected


@pytest.mark.parametrize("value,annotation", [
    (True, int), ("3", int), (1, bool), (3.5, int), ([1, "a"], list[int]), ("x", Literal["a", "b"]),
    (True, Literal[1, 2]), ({"a": "b"}, dict[str, int]), (5, list[int]), ("1e-4x", float), ("1e4", int),
])
def test_rejects_with_key(value, annotation):
    with pytest.raises(ConfigError) as e:
        coerce_value(value, annotation, "sec.key", "f.yaml")
    assert str(e.value).startswith("f.yaml: sec.key")
