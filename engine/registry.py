"""``Registry``: the one name -> entry table behind every "by name" choice (timm's ``_registry.py`` habit).

Backbones, fusers, text encoders, loader backends, the profiler's stages and the
loader benchmarks each keep one ``Registry``; it is a plain dict in registration
order (iteration, ``in``, ``sorted`` and ``monkeypatch.setitem`` work as on any
dict) with three additions:

- ``@REGISTRY.register("name")`` adds a function or class under that name;
- ``REGISTRY[name]`` with an unknown name raises ``UnknownName`` (a ValueError and
  a KeyError) naming the config key and listing the known names;
- ``REGISTRY.names()`` is the sorted list of known names.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, TypeVar, Union

T = TypeVar("T")


class UnknownName(ValueError, KeyError):
    """A name that is not in a registry; the message names the setting and the known names."""

    __str__ = ValueError.__str__  # not KeyError's quoted repr


class Registry(dict):
    """Name -> entry, in registration order. ``key`` is the setting that picks a name (e.g. "model.fusion")."""

    def __init__(self, key: str, entries: Union[Mapping[str, T], Iterable[tuple[str, T]], None] = None, hint: str = ""):
        super().__init__(entries or ())
        self.key, self.hint = key, hint  # hint: what else the setting accepts, said after the known names

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a function or class adds it under ``name``."""

        def deco(entry: T) -> T:
            self[name] = entry
            return entry

        return deco

    def names(self) -> list[str]:
        return sorted(self)

    def __missing__(self, name: str):
        raise UnknownName(f"{self.key}={name!r} is unknown; known: {self.names()}{self.hint}")
