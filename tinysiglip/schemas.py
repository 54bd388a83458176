"""JSON Schemas of the files users write, exported from the pydantic models that validate them.

``tinysiglip schema study|config|search-space`` prints one; ``schemas/*.schema.json`` hold the committed
copies that the ``# yaml-language-server: $schema=...`` first line of every study, config and
search-space file points at, so editors complete and check those files as they are typed (a test keeps
the copies equal to what the models export).

The schemas are JSON Schema draft-07 (``definitions``), which is what the YAML language server (VS Code,
Neovim, JetBrains via LSP) implements fully.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from tinysiglip.config.fields import ProjectJsonSchema

# kind -> (module, model, committed file under schemas/)
SCHEMAS: dict[str, tuple[str, str, str]] = {
    "study": ("tinysiglip.sweep.study.models", "StudyFile", "study.schema.json"),
    "config": ("tinysiglip.config.training", "TrainingConfig", "config.schema.json"),
    "search-space": ("tinysiglip.sweep.search_space", "SearchSpaceFile", "search_space.schema.json"),
}
_TITLES = {
    "study": "TinySigLIP study file (studies/*.yaml)",
    "config": "TinySigLIP training config (tinysiglip train --config)",
    "search-space": "TinySigLIP search space (search_spaces/*.yaml)",
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft-07) of the file kind ``study``, ``config`` or ``search-space``."""
    module, name, _ = SCHEMAS[kind]
    model = getattr(importlib.import_module(module), name)
    schema = model.model_json_schema(schema_generator=ProjectJsonSchema, ref_template="#/definitions/{model}")
    definitions = schema.pop("$defs", None)
    out = {"$schema": "http://json-schema.org/draft-07/schema#", **schema, "title": _TITLES[kind]}
    if definitions:
        out["definitions"] = definitions
    return out


def schema_text(kind: str) -> str:
    """``json_schema(kind)`` as the text of its committed file."""
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"
