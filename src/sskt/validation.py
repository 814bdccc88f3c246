"""Type and range checks of config sections and method options, as one-line :class:`SSKTError` s.

The config sections and every method's options stay plain stdlib dataclasses; :func:`validate` builds
one from a mapping through pydantic (lax mode: ``"5e-4"`` is a float, ``2.0`` an int, a number given for
a text field is that text) and names the dotted key of each bad value:

    train.epochs: expected an integer, got 'abc'

Ranges are declared on the fields (``Annotated[int, Ge(1)]``), choices as ``Literal``; other checks stay
in ``__post_init__`` (an SSKTError raised there passes through unchanged). Keys the dataclass does not have
are refused, listing the known ones. A nested section (a list of sources, a cache mapping) is a field marked
:class:`Parsed`: its own dataclass is validated the same way, and its errors name the whole dotted key
(``method.sources.0.input_size``, ``method.cache.views``). A utility: imports nothing else of sskt but errors.
"""
from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sskt.errors import SSKTError

T = TypeVar("T")

# Numbers given for text fields (`precision: 16`, a split named 2012) are accepted as that text.
_SETTINGS = {"coerce_numbers_to_str": True}

_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "dataclass_type": "a mapping", "dataclass_args_type": "a mapping", "none_required": "null",
}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def validate(cls: type[T], raw: dict, prefix: str = "") -> T:
    """``cls(**raw)`` with every field's type and range checked; errors name ``prefix.key``.

    Example:
        >>> from sskt.config import TrainConfig
        >>> validate(TrainConfig, {"epochs": "abc"}, "train")
        Traceback (most recent call last):
        ...
        sskt.errors.SSKTError: train.epochs: expected an integer, got 'abc'
    """
    import pydantic

    if isinstance(raw, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted((k for k in raw if k not in known), key=str)
        if unknown:
            where = f" in {prefix}" if prefix else ""
            raise SSKTError(f"unknown key(s){where}: {unknown}; known: {sorted(known)}")
        for key, value in raw.items():
            if isinstance(value, bool) and not _takes_bool(cls, key):
                # pydantic's lax mode reads true as 1: `train.epochs=true` would train one epoch.
                got = "true" if value else "false"
                raise SSKTError(f"{'.'.join(p for p in (prefix, str(key)) if p)}: expected "
                                f"{_expected_of(cls, key)}, got {got}")
    try:
        return _adapter(cls).validate_python(raw, context={"prefix": prefix})
    except pydantic.ValidationError as err:
        raise SSKTError(describe(err.errors(), prefix)) from None


def _field_types(cls: type, key: str) -> list[Any]:
    """The plain types a field's annotation admits (``Annotated`` and unions unwrapped); [Any] if unknown."""
    import typing

    try:
        hint = typing.get_type_hints(cls, include_extras=True).get(key, Any)
    except Exception:  # an annotation that cannot be resolved here: no opinion
        return [Any]
    out, todo = [], [hint]
    while todo:
        t = todo.pop()
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            todo.append(typing.get_args(t)[0])
        elif origin in (typing.Union, types.UnionType):
            todo.extend(typing.get_args(t))
        else:
            out.append(origin or t)
    return out


def _takes_bool(cls: type, key: str) -> bool:
    types = _field_types(cls, key)
    # A field of no numeric type (text, a list, a mapping, a nested section) keeps pydantic's own check.
    return Any in types or bool in types or not ({int, float} & set(types))


def _expected_of(cls: type, key: str) -> str:
    types = set(_field_types(cls, key))
    return "an integer" if int in types and float not in types else "a number"


class Parsed:
    """Marks a nested section: ``Annotated[CacheSpec | None, Parsed(cache_spec)]``. Its value (unless None)
    is ``parse(value, key)``, ``key`` being the field's dotted key (``method.cache``); ``parse`` may be a
    dataclass (then :func:`validate` with that prefix). ``each=True``: the value is a list, its item ``i``
    parsed with the key ``<field>.i`` (``method.sources.0``). A bad value raises the nested parse's SSKTError.

    As in :class:`sskt.methods.sskt.SSKTOptions`::

        sources: Annotated[list[SourceConfig], Parsed(source_config, each=True)]
        # method.sources.1.alpha: must be >= 0, got -1
    """

    def __init__(self, parse: Callable[[Any, str], Any] | type, each: bool = False) -> None:
        self.parse, self.each = parse, each

    def __call__(self, value: Any, key: str) -> Any:
        if value is None:
            return None
        one = functools.partial(validate, self.parse) if isinstance(self.parse, type) else self.parse
        if not self.each:
            return one(value, key)
        if not isinstance(value, list):
            raise SSKTError(f"{key}: expected a list, got {_show(value)}")
        return [one(item, f"{key}.{i}") for i, item in enumerate(value)]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def run(value: Any, info: Any) -> Any:
            return self(value, ".".join(p for p in ((info.context or {}).get("prefix"), info.field_name) if p))

        return core_schema.with_info_plain_validator_function(run)


@functools.cache
def _adapter(cls: type) -> Any:
    import pydantic

    # A stdlib dataclass takes pydantic settings from __pydantic_config__, which with_config sets.
    return pydantic.TypeAdapter(pydantic.with_config(_SETTINGS)(cls))


def describe(errors: list[dict], prefix: str = "") -> str:
    """One line for pydantic's errors: ``key: expected ..., got ...`` per bad key, joined by ``; ``."""
    by_key: dict[str, list[dict]] = {}
    for e in errors:
        by_key.setdefault(dotted(e["loc"], prefix), []).append(e)
    return "; ".join(_one(key, errs) for key, errs in by_key.items())


def dotted(loc: tuple, prefix: str = "") -> str:
    """``prefix.field`` plus list indices (``method.sources.0``). Config dataclasses are flat, so the
    other strings in a location are pydantic's names of union members (``bool``, ``str``): left out."""
    parts = [prefix] if prefix else []
    if loc:
        parts.append(str(loc[0]))
        parts += [str(p) for p in loc[1:] if isinstance(p, int)]
    return ".".join(parts) or "config"


def _one(key: str, errors: list[dict]) -> str:
    if errors[0]["type"] in ("missing", "missing_argument"):
        return f"{key}: required, not given"
    got = _show(errors[0].get("input"))
    for e in errors:
        if e["type"] in _BOUNDS:
            name, op = _BOUNDS[e["type"]]
            bound = e["ctx"][name]
            bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound  # > 0, not > 0.0
            return f"{key}: must be {op} {bound}, got {got}"
        if e["type"] == "literal_error":  # a choice (Literal["eval", "train"])
            return f"{key}: must be {e['ctx']['expected']}, got {got}"
    expected = list(dict.fromkeys(_EXPECTED.get(e["type"], "") for e in errors))
    if "" in expected:  # a check without a phrase of ours: pydantic's own words
        msg = next(e["msg"] for e in errors if e["type"] not in _EXPECTED)
        return f"{key}: {msg[:1].lower()}{msg[1:]}, got {got}"
    return f"{key}: expected {' or '.join(expected)}, got {got}"


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
