"""Configuration options documented where they are defined.

Every tunable of the core is a field of a frozen dataclass (``MemoryConfig``,
``KeyframePolicy``, ``GroundingConfig``, ...). :func:`option` attaches a description and a
valid range to the field itself, so the ROS node's parameter table, the documented params
file and the core's defaults are one thing, not three copies that drift apart (they did:
``max_voxels`` was 200,000 in one place and 100,000 in another).

The metadata keys are plain strings (``help``, ``min``, ``max``, ``choices``) so a module
may also write ``field(default=..., metadata={"help": ...})`` without importing this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionInfo", "check_options", "iter_options", "option", "options_of"]


def option(
    default: Any,
    help: str,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its documentation; tuples and lists become factories."""
    meta: dict[str, Any] = {"help": help}
    if min is not None or max is not None:
        if min is None or max is None:
            raise ValueError("give both min and max, or neither")
        meta["min"], meta["max"] = min, max
    if choices:
        meta["choices"] = tuple(choices)
    if isinstance(default, list):
        value = list(default)
        return dataclasses.field(default_factory=lambda: list(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionInfo:
    """One documented field: dotted name (with the caller's prefix), default, metadata."""

    name: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"option {f.name!r} has no default")


def iter_options(cls: type, prefix: str = "") -> Iterator[OptionInfo]:
    """The documented fields of dataclass ``cls``; raises for an undocumented one, so a
    new field cannot silently miss the parameter table."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            raise ValueError(f"{cls.__name__}.{f.name} has no 'help' metadata")
        yield OptionInfo(
            name=f"{prefix}{f.name}",
            default=_default(f),
            help=str(meta["help"]),
            min=meta.get("min"),
            max=meta.get("max"),
            choices=tuple(meta.get("choices", ())),
        )


def options_of(cls: type, prefix: str = "") -> list[OptionInfo]:
    return list(iter_options(cls, prefix))


def check_options(obj: Any, where: str = "") -> None:
    """Raise ``ValueError`` naming the field when a value is outside its documented range
    or choices, or of the wrong kind (a config built in code gets the same checks as one
    from ROS parameters)."""
    prefix = f"{where}." if where and not where.endswith(".") else where
    for f in dataclasses.fields(obj):
        meta = f.metadata
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
        if "min" in meta:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not meta["min"] <= value <= meta["max"]:
                raise ValueError(f"{name}={value!r} is outside [{meta['min']}, {meta['max']}]")
