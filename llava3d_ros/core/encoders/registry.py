"""Backend registry: a config mapping in, an :class:`EncoderBundle` out.

``create_encoders({"backend": "dinov2_onnx", "input_size": 224})`` picks the factory
registered under ``"dinov2_onnx"`` and hands it the remaining keys as options. Built-in
backends are imported on first use, and they import their heavy dependencies
(onnxruntime, transformers, sentence-transformers) only inside their factories, so
importing this module costs nothing beyond torch.

A factory declares its options as a dataclass; :func:`parse_options` turns the mapping
into that dataclass and rejects unknown keys, so a typo in a params file fails at start-up
with the list of accepted keys instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .base import EncoderBundle, EncoderError, TextEncoder

BackendFactory = Callable[[Mapping[str, Any]], EncoderBundle]
TextFactory = Callable[[Mapping[str, Any]], TextEncoder]

# Built-in names -> module that registers them when imported (lazy: nothing heavy until used).
_BUILTIN_BACKENDS: dict[str, str] = {
    "dinov2_onnx": "llava3d_ros.core.encoders.onnx_dinov2",
    "dinov2_torch": "llava3d_ros.core.encoders.dinov2_torch",
    "hf_clip": "llava3d_ros.core.encoders.hf_clip",
}
_BUILTIN_TEXT: dict[str, str] = {
    "minilm": "llava3d_ros.core.encoders.text_minilm",
}

_backends: dict[str, BackendFactory] = {}
_text_encoders: dict[str, TextFactory] = {}
_lock = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _register(table: dict[str, Any], kind: str, name: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def decorator(factory: F) -> F:
        with _lock:
            existing = table.get(name)
            # Re-registering the same function (module reloaded) is harmless; a different one
            # under the same name is a configuration bug that would silently change behaviour.
            if existing is not None and _qualname(existing) != _qualname(factory):
                raise ValueError(f"{kind} {name!r} is already registered by {_qualname(existing)}")
            table[name] = factory
        return factory

    return decorator


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register_backend(name: str) -> Callable[[F], F]:
    """Decorator: register ``factory(options: Mapping) -> EncoderBundle`` under ``name``."""
    return _register(_backends, "encoder backend", name)


def register_text_encoder(name: str) -> Callable[[F], F]:
    """Decorator: register ``factory(options: Mapping) -> TextEncoder`` under ``name``."""
    return _register(_text_encoders, "text encoder", name)


def available_backends() -> list[str]:
    """Every backend name :func:`create_encoders` accepts (registered or built in)."""
    return sorted(set(_backends) | set(_BUILTIN_BACKENDS))


def available_text_encoders() -> list[str]:
    return sorted(set(_text_encoders) | set(_BUILTIN_TEXT))


def _lookup(name: str, table: dict[str, Any], builtins: dict[str, str], kind: str) -> Any:
    if name not in table and name in builtins:
        try:
            importlib.import_module(builtins[name])
        except ImportError as exc:
            raise EncoderError(f"{kind} {name!r} could not be imported: {exc}") from exc
    factory = table.get(name)
    if factory is None:
        known = sorted(set(table) | set(builtins))
        raise EncoderError(f"unknown {kind} {name!r}; available: {', '.join(known)}")
    return factory


def _split_config(config: Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, Mapping):
        raise EncoderError(f"{kind} config must be a mapping, got {type(config).__name__}")
    if "backend" not in config:
        raise EncoderError(f"{kind} config needs a 'backend' key")
    name = config["backend"]
    if not isinstance(name, str):
        raise EncoderError(f"{kind} 'backend' must be a string, got {name!r}")
    return name, {k: v for k, v in config.items() if k != "backend"}


def create_encoders(config: Mapping[str, Any]) -> EncoderBundle:
    """Build the encoder bundle named by ``config["backend"]``; other keys are its options."""
    name, options = _split_config(config, "encoder")
    factory = _lookup(name, _backends, _BUILTIN_BACKENDS, "encoder backend")
    bundle = factory(options)
    if not isinstance(bundle, EncoderBundle):
        raise EncoderError(f"backend {name!r} returned {type(bundle).__name__}, not EncoderBundle")
    return bundle


def create_text_encoder(config: Mapping[str, Any]) -> TextEncoder:
    """Build the text encoder named by ``config["backend"]`` (e.g. ``{"backend": "minilm"}``)."""
    name, options = _split_config(config, "text encoder")
    factory = _lookup(name, _text_encoders, _BUILTIN_TEXT, "text encoder")
    return factory(options)


# --- option parsing -------------------------------------------------------------------


def parse_options(cls: type[T], options: Mapping[str, Any], owner: str) -> T:
    """Mapping -> dataclass ``cls``: unknown keys and wrongly typed values raise EncoderError.

    Only simple annotations are checked (bool/int/float/str, optionals, lists/tuples of
    them): params arrive from YAML / ROS parameters, where those are the types in use."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise EncoderError(
            f"{owner}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in options.items():
        values[key] = _coerce(value, hints[key], f"{owner}: option {key!r}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required option is missing
        raise EncoderError(f"{owner}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except EncoderError as exc:
                errors.append(str(exc))
        raise EncoderError(errors[0] if len(errors) == 1 else f"{where}: bad value {value!r}")
    if origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise EncoderError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise EncoderError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise EncoderError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise EncoderError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if hasattr(value, "__fspath__"):  # pathlib.Path from Python callers
            return str(value)
        raise EncoderError(f"{where}: expected a string, got {value!r}")
    return value
