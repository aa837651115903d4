"""Every config key with its value, default and comment: what ``engine/train.py --print-config`` prints.

The comments are read from the config dataclasses' source (the comment on a field's line, or the comment lines
right above it), so the field definitions in ``engine/*/config.py`` stay the one place a key is documented.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from pathlib import Path

import yaml

_ROOT = Path(__file__).resolve().parents[1]

_FIELD = re.compile(r"    (\w+)\s*:")  # a field at class-body indent ("    name: type = default")


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s source (the line's own comment after any comment lines above it)."""
    src = textwrap.dedent(inspect.getsource(cls))
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for no, line in enumerate(src.splitlines(), 1):
        if line.startswith("    #") and not line.startswith("     "):
            above.append(comments.get(no, ""))
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in names and not line.startswith("     "):
            own = comments.get(no)
            text = " ".join([*above, *([own] if own else [])]).strip()
            if text:
                out[match.group(1)] = text
        above = []
    return out


def _value(v) -> str:
    v = list(v) if isinstance(v, tuple) else v
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def describe_config(cfg) -> str:
    """``cfg`` as YAML sections, one key a line: ``key: value  # comment`` plus ``[default: X]`` where it differs."""
    hints = typing.get_type_hints(type(cfg))
    lines = ["# Every key, as resolved (recipe + overrides). Set one with --section.key=value or in a recipe;",
             "# [default: X] marks a value that differs from the built-in default."]
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        cls = hints[section.name]
        where = Path(inspect.getsourcefile(cls)).resolve().relative_to(_ROOT)
        lines.append(f"{section.name}:  # {cls.__name__} ({where})")
        docs = field_comments(cls)
        for f in dataclasses.fields(cls):
            value, default = getattr(obj, f.name), _default(f)
            if dataclasses.is_dataclass(value) or (isinstance(value, list) and value and dataclasses.is_dataclass(value[0])):
                value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else [dataclasses.asdict(v) for v in value]
            line = f"  {f.name}: {_value(value)}"
            notes = [docs[f.name]] if f.name in docs else []
            if _value(value) != _value(default if not dataclasses.is_dataclass(default) else dataclasses.asdict(default)):
                notes.append(f"[default: {_value(default)}]")
            lines.append(line + (f"  # {' '.join(notes)}" if notes else ""))
    return "\n".join(lines)
