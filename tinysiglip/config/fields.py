"""Building blocks of the project's pydantic models: strict field types, tagged unions, derived models.

Every model of a file a user writes (training configs, study files, search spaces) is built from these,
so the same rules hold everywhere and the exported JSON Schema says what the loader checks:

* unknown keys are errors (``extra="forbid"``), numbers are numbers and booleans are booleans (strict:
  ``true`` is not 1, ``"3"`` is not 3; PyYAML already reads ``1e-4`` as a float, see yaml_files.py);
* a validator that refuses a value raises :func:`problem`, which carries the fix (and optionally the
  sub-field) that tinysiglip.config.problems puts into the user's error message;
* unions are tagged (``tagged_union``): one member is validated, so an error names one field, not one
  per member, and the JSON Schema is a ``oneOf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    WithJsonSchema,
    create_model,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "NAME_PATTERN",
    "ONE_LINE_PATTERN",
    "Description",
    "Integer",
    "Lambda",
    "Name",
    "PathText",
    "ProjectJsonSchema",
    "StrictModel",
    "Text",
    "UnionInfo",
    "partial",
    "problem",
    "tagged_union",
    "without",
]

# Names of studies, cells, teachers and datasets: they become Optuna study names ("<study>/<cell>"),
# folder names and database keys, so no '/', no spaces, no control characters.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Free text shown in tables and logs (descriptions): one line, no control characters.
ONE_LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def problem(message: str, fix: str = "", *, field: str | None = None) -> PydanticCustomError:
    """A validation error whose message is ``message``; ``fix`` (and ``field``, a sub-field of the
    value being validated) reach the user's error message through tinysiglip.config.problems."""
    context: dict[str, Any] = {"fix": fix}
    if field is not None:
        context["field"] = field
    # pydantic fills "{name}" from the context: the message is already final text, the context holds
    # only "fix" and "field", which no message spells in braces.
    return PydanticCustomError("tinysiglip", message, context)


class StrictModel(BaseModel):
    """Base of every model of a user-written file: unknown keys refused, no silent type coercion.

    ``removed_keys`` maps keys that users may expect here (they exist in a related model) to the fix
    shown when they appear, e.g. ``train.epochs`` in a study cell -> "set budget.epochs".
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True, frozen=True
    )
    removed_keys: ClassVar[dict[str, str]] = {}


# Scalars. Integer is for models that cannot be strict as a whole (pydantic dataclasses).
Integer = Annotated[int, Strict()]
Text = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Description = Annotated[str, StringConstraints(pattern=ONE_LINE_PATTERN)]
# A path in a file; Python callers may pass a pathlib.Path.
PathText = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, PurePath) else v)]


def _loss_weight(value: Any) -> float | str:
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return 0.0
    if value is True or (isinstance(value, str) and value.strip().lower() == "on"):
        return "on"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value < 0:
            raise problem(
                f"negative λ ({value:g}): a loss weight must be >= 0",
                "use a λ >= 0; 0 or off switches the term off",
            )
        return float(value)
    raise problem(
        f"a loss weight λ must be a number >= 0 or off, got {value!r}",
        "write e.g. 1.0, or off to switch the term off",
    )


# A loss weight λ >= 0. ``off`` (or false) is 0 and switches the term off; ``on`` (or true) switches
# it on at the default weight of the layer below (the study's defaults, else the training default).
# PyYAML reads a bare off/on as false/true, YAML 1.2 editors read them as text: both are accepted.
Lambda = Annotated[
    float | Literal["on"],
    BeforeValidator(_loss_weight),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "boolean"},
                {"enum": ["off", "on"]},
            ]
        }
    ),
]


@dataclass(frozen=True)
class UnionInfo:
    """How a tagged union picks its member; kept in the union's metadata for error messages."""

    key: str | None  # the input key holding the tag ("type", "kind"), if a key picks the member
    what: str  # what the tag names, for messages ("pruner type")
    fix: str  # shown when no member fits


def tagged_union(
    members: Mapping[str, Any],
    *,
    what: str,
    fix: str,
    key: str | None = None,
    default: str | None = None,
    pick: Callable[[Any], str | None] | None = None,
) -> Any:
    """A union of ``members`` (tag -> type), one of which validates a value.

    The member is ``value[key]`` (``default`` when the key is absent), or what ``pick(value)`` says
    (``pick`` sees the raw value and returns a tag, or None when no member fits).
    """

    def by_key(value: Any) -> str | None:
        if isinstance(value, Mapping):
            tag = value.get(key, default)
            return tag if isinstance(tag, str) or tag is None else repr(tag)
        if isinstance(value, BaseModel):
            return getattr(value, key, None)  # type: ignore[arg-type]
        return None

    options = tuple(Annotated[member, Tag(tag)] for tag, member in members.items())
    chooser = Discriminator(pick or by_key)
    return Annotated[Union[options], chooser, UnionInfo(key, what, fix)]  # noqa: UP007


def _fields_of(model: Any) -> dict[str, Any]:
    return model.model_fields if issubclass(model, BaseModel) else model.__pydantic_fields__


def without(model: type, removed: Mapping[str, str], *, name: str, doc: str) -> type[StrictModel]:
    """``model`` less the keys in ``removed`` (key -> the fix shown when a user sets it anyway).

    Used for sections that a study may only partly set (the driver owns cache paths, the budget owns
    epochs); the fields kept are the very same fields, types, ranges and descriptions.
    """
    fields = {k: (f.annotation, f) for k, f in _fields_of(model).items() if k not in removed}
    derived = create_model(name, __base__=StrictModel, __doc__=doc, **fields)  # type: ignore[call-overload]
    derived.removed_keys = {**getattr(model, "removed_keys", {}), **removed}
    return derived


def partial(
    model: type, *, name: str, doc: str, defaults: Mapping[str, Any] | None = None
) -> type[StrictModel]:
    """``model`` with every field optional (``defaults`` or None when absent), same types and ranges.

    The model's own validators (cross-field checks) are not copied: a partial value is checked once
    it is merged into a whole one. Which keys were given is ``instance.model_fields_set``.
    """
    fields = {}
    for key, info in _fields_of(model).items():
        annotation = info.annotation | None
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]  # type: ignore[valid-type]
        default = (defaults or {}).get(key)
        fields[key] = (annotation, Field(default, description=info.description, examples=info.examples))
    return create_model(name, __base__=StrictModel, __doc__=doc, **fields)  # type: ignore[call-overload]


class ProjectJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, plus: a mapping keyed by names refuses keys that are not names.

    pydantic writes ``patternProperties`` for ``dict[Name, ...]`` but leaves other keys allowed.
    """

    def dict_schema(self, schema):  # noqa: ANN001 - pydantic's signature
        out = super().dict_schema(schema)
        if "patternProperties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
