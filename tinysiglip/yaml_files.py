"""Reading the project's YAML (studies, search spaces, training configs): safe, strict, unsurprising.

* ``yaml.SafeLoader`` underneath: no Python tags, nothing is ever evaluated;
* duplicate keys are an error (PyYAML would silently keep the last one);
* ``1e-4`` is a float, as in YAML 1.2 and as every ML researcher writes learning rates (PyYAML's
  YAML 1.1 resolver reads it as the string ``"1e-4"`` because it lacks a dot).
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads 1e-4 as a float."""


def _construct_mapping(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`StrictSafeLoader`."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
