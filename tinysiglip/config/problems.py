"""pydantic's validation errors, reshaped for people: the dotted field, the problem and the fix.

pydantic reports ``loc=('grid', 'A3', 'loss', 'feet')``, ``type='extra_forbidden'``; a user needs
``grid.A3.loss.feet: unknown key 'feet'. Fix: valid keys here: feat, affinity, ... (did you mean
'grid.A3.loss.feat'?)``. The shaping walks the model along the error's location, so it knows which keys
were valid there, which choices a literal had, and which member of a tagged union was being read.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tinysiglip.config.fields import NAME_PATTERN, ONE_LINE_PATTERN, UnionInfo

__all__ = ["Problem", "closest", "format_problems", "problems_from"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file: where (dotted field), what, and how to fix it."""

    field: str
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.field}: {self.problem}" if self.field else self.problem
        return text + (f". Fix: {self.fix}" if self.fix else "")


def format_problems(source: str, problems: list[Problem]) -> str:
    """``source: field: problem. Fix: fix`` for one problem, a numbered list for several."""
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    lines = [f"{source}: {len(problems)} problems"]
    lines.extend(f"  {i}. {p}" for i, p in enumerate(problems, 1))
    return "\n".join(lines)


def closest(word: str, valid: Iterable[str], *, prefix: str = "") -> str:
    """' (did you mean 'x'?)' for the closest valid word (shown as ``prefix + x``), or ''."""
    match = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {prefix + match[0]!r}?)" if match else ""


# string patterns -> (problem, fix); "{value}" is the refused text
_PATTERNS = {
    NAME_PATTERN: (
        "name {value!r} has characters other than letters, digits, '_', '.', '-'",
        "rename it (no '/' or spaces)",
    ),
    ONE_LINE_PATTERN: (
        "{value!r} has a newline or a control character",
        "write it on one line (a folded '>-' block is fine)",
    ),
}
_MAPPING_ERRORS = {
    "model_type",
    "model_attributes_type",
    "dict_type",
    "dataclass_type",
    "dataclass_exact_type",
}
_KINDS = {
    "int_type": ("an integer", "write a whole number"),
    "int_parsing": ("an integer", "write a whole number"),
    "int_from_float": ("an integer", "write a whole number"),
    "float_type": ("a number", "write a plain number (not quoted)"),
    "float_parsing": ("a number", "write a plain number (not quoted)"),
    "finite_number": ("a finite number", "write a plain number"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "string_type": ("text", "write a string (quote it if YAML reads it as something else)"),
    "list_type": ("a list", "write a list, e.g. [0, 1, 2]"),
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


@dataclass
class _Place:
    """Where an error's location leads in the model: dotted parts, the model holding the last part,
    and that part's field info and annotation."""

    parts: list[str]
    parent: type | None = None
    field: FieldInfo | None = None
    annotation: Any = None
    metadata: tuple = ()


def _unwrap(annotation: Any, metadata: tuple = ()) -> tuple[Any, tuple]:
    """Strip Annotated and Optional, collecting the Annotated metadata."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            args = get_args(annotation)
            annotation, metadata = args[0], (*metadata, *args[1:])
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, metadata


def _fields(model: Any) -> dict[str, FieldInfo] | None:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_fields
    return getattr(model, "__pydantic_fields__", None) if isinstance(model, type) else None


def _tag_member(union: Any, tag: Any) -> Any:
    for member in get_args(union):
        for meta in get_args(member)[1:] if get_origin(member) is Annotated else ():
            if getattr(meta, "tag", None) == tag:
                return member
    return None


def _walk(root: Any, loc: tuple) -> _Place:
    place = _Place(parts=[])
    annotation, metadata = _unwrap(root)
    for item in loc:
        if item == "[key]":  # the error is about the mapping key just passed, not its value
            continue
        if get_origin(annotation) in (Union, types.UnionType) and any(
            isinstance(m, UnionInfo) for m in metadata
        ):
            member = _tag_member(annotation, item)
            if member is not None:  # the tag of a tagged union: not a key of the file
                annotation, metadata = _unwrap(member)
                continue
        fields = _fields(annotation)
        if fields is not None:
            place.parent, place.field = annotation, fields.get(str(item))
            place.parts.append(str(item))
            if place.field is None:
                annotation, metadata = None, ()
            else:
                annotation, metadata = _unwrap(place.field.annotation, tuple(place.field.metadata))
            continue
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is dict:
            place.parts.append(str(item))
            annotation, metadata = _unwrap(args[1]) if args else (None, ())
            place.parent, place.field = None, None
            continue
        if origin in (list, tuple) and isinstance(item, int) and place.parts:
            place.parts[-1] += f"[{item}]"
            annotation, metadata = _unwrap(args[0]) if args else (None, ())
            continue
        place.parts.append(str(item))
        annotation, metadata = None, ()
    place.annotation, place.metadata = annotation, metadata
    return place


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, (list, tuple, dict)) else repr(value)


def _example_fix(key: str, field: FieldInfo | None) -> str:
    examples = getattr(field, "examples", None) if field is not None else None
    if examples:
        return f"add {key}: {_yaml_inline(examples[0])}"
    return f"add {key}: <value>"


def _yaml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_inline(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _shape(error: dict[str, Any], root: Any, prefix: str) -> Problem:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    place = _walk(root, tuple(error["loc"]))
    parts = ([prefix] if prefix else []) + place.parts
    dotted = ".".join(parts)
    key = place.parts[-1] if place.parts else ""

    if kind == "tinysiglip":
        where = ".".join([*parts, ctx["field"]]) if ctx.get("field") else dotted
        return Problem(where, error["msg"], ctx.get("fix", ""))
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        removed = getattr(place.parent, "removed_keys", {}) or {}
        if key in removed:
            return Problem(dotted, f"{key!r} cannot be set here", removed[key])
        valid = [k for k in (_fields(place.parent) or {}) if k not in removed]
        return Problem(
            dotted,
            f"unknown key {key!r}",
            "valid keys here: "
            + ", ".join(valid)
            + closest(key, valid, prefix=".".join(parts[:-1]) + "." if len(parts) > 1 else ""),
        )
    if kind in ("missing", "missing_keyword_argument", "missing_argument"):
        return Problem(dotted, f"missing {key!r}", _example_fix(key, place.field))
    if kind in _MAPPING_ERRORS:
        return Problem(dotted, f"expected a mapping, got {_show(value)}", f"write {key}: {{key: value, ...}}")
    if kind in _KINDS:
        what, fix = _KINDS[kind]
        return Problem(dotted, f"expected {what}, got {_show(value)}", fix)
    if kind in _BOUNDS:
        op = _BOUNDS[kind]
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return Problem(dotted, f"must be {op} {bound}, got {value!r}", f"use a value {op} {bound}")
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERNS:
        text, fix = _PATTERNS[ctx["pattern"]]
        return Problem(dotted, text.format(value=value), fix)
    if kind in ("string_too_short", "too_short"):
        return Problem(dotted, f"must not be empty, got {_show(value)}", _example_fix(key, place.field))
    if kind == "literal_error":
        choices = (
            [str(c) for c in get_args(place.annotation)] if get_origin(place.annotation) is Literal else []
        )
        shown = ", ".join(choices) or ctx.get("expected", "")
        return Problem(
            dotted, f"{value!r} is not one of {shown}", f"use one of {shown}" + closest(value, choices)
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        info = next((m for m in place.metadata if isinstance(m, UnionInfo)), None)
        if info is not None and isinstance(value, dict) and info.key in value:
            tags = [getattr(m, "tag", "") for a in get_args(place.annotation) for m in get_args(a)[1:]]
            tag = value[info.key]
            return Problem(
                f"{dotted}.{info.key}" if dotted else info.key,
                f"unknown {info.what} {tag!r}",
                f"use one of {', '.join(tags)}" + closest(str(tag), tags),
            )
        if info is not None and isinstance(value, dict):
            return Problem(dotted, f"cannot tell which {info.what} this is", info.fix)
        return Problem(dotted, f"expected a mapping, got {_show(value)}", info.fix if info else "")
    if kind in ("value_error", "assertion_error"):
        return Problem(dotted, str(ctx.get("error", error["msg"])))
    return Problem(dotted, f"{error['msg']} (got {_show(value)})")


def problems_from(error: ValidationError, root: Any, *, prefix: str = "") -> list[Problem]:
    """Every error of ``error`` (raised validating ``root``, a model or an annotation), shaped.

    ``prefix`` is the dotted place of the validated value in its file (e.g. ``grid.A3``).
    """
    out: list[Problem] = []
    for item in error.errors(include_url=False):
        shaped = _shape(item, root, prefix)
        if shaped not in out:
            out.append(shaped)
    return out
