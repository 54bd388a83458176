"""One schema: the pydantic models are what the loaders check and what editors see (JSON Schema).

The committed schemas/*.schema.json equal what `tinysiglip schema ...` prints; every shipped study,
config and search space starts with its yaml-language-server line and validates against that schema
(read as PyYAML reads it, and as a YAML 1.2 editor reads it: `off` is then text, not false); broken
study files are refused by the JSON Schema wherever it can express the rule.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_study_files import BASE, ERROR_CASES, SPACE, SPACE_ERRORS

from tinysiglip.cli import main
from tinysiglip.config import ConfigError, load_config_file
from tinysiglip.schemas import SCHEMAS, json_schema, schema_text
from tinysiglip.sweep import StudyError, load_study
from tinysiglip.sweep.search_space import load_search_space
from tinysiglip.yaml_files import load_yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "study": sorted((ROOT / "studies").glob("*.yaml")),
    "config": sorted((ROOT / "configs").glob("*.yaml")),
    "search-space": sorted((ROOT / "search_spaces").glob("*.yaml")),
}
SHIPPED_FILES = [(kind, path) for kind, paths in SHIPPED.items() for path in paths]


class Yaml12Loader(yaml.SafeLoader):
    """What a YAML 1.2 editor sees: only true/false are booleans (on/off/yes/no stay text)."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((ROOT / "schemas" / SCHEMAS[kind][2]).read_text()))


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_committed_schema_is_what_the_models_export(kind, capsys):
    committed = (ROOT / "schemas" / SCHEMAS[kind][2]).read_text()
    assert committed == schema_text(kind), (
        f"schemas/{SCHEMAS[kind][2]} is stale: regenerate it with "
        f"`tinysiglip schema {kind} > schemas/{SCHEMAS[kind][2]}`"
    )
    assert main(["schema", kind]) == 0
    assert capsys.readouterr().out == committed
    jsonschema.Draft7Validator.check_schema(json_schema(kind))


def test_schema_carries_descriptions_for_editors():
    study = json_schema("study")
    assert study["description"].startswith("A study")
    loss = json_schema("config")["definitions"]["LossConfig"]["properties"]
    assert "λ_feat" in loss["feat"]["description"]
    assert {"type": "boolean"} in loss["feat"]["anyOf"] and {"enum": ["off", "on"]} in loss["feat"]["anyOf"]


def test_every_shipped_file_kind_is_covered():
    assert all(SHIPPED.values()) and len(SHIPPED["study"]) == 4


@pytest.mark.parametrize(("kind", "path"), SHIPPED_FILES, ids=lambda x: getattr(x, "name", x))
def test_shipped_file_names_its_schema_and_validates(kind, path):
    text = path.read_text()
    first = text.splitlines()[0]
    schema_file = SCHEMAS[kind][2]
    assert first == f"# yaml-language-server: $schema=../schemas/{schema_file}"
    assert (path.parent / f"../schemas/{schema_file}").resolve().is_file()
    check = validator(kind)
    for loader in ("pyyaml", "yaml 1.2"):
        data = load_yaml(text) if loader == "pyyaml" else yaml.load(text, Loader=Yaml12Loader)  # noqa: S506
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in check.iter_errors(data)]
        assert not errors, (path.name, loader, errors)
    # ... and the loaders accept it (the same models)
    if kind == "study":
        load_study(path, local=True)
    elif kind == "config":
        load_config_file(path)
    else:
        load_search_space(path, field="search_space", referenced_from="test")


def test_yaml12_reading_really_differs():
    """The shipped ablation study spells λ = 0 as off: text for an editor, false for PyYAML."""
    text = (ROOT / "studies/ablation_A.yaml").read_text()
    assert load_yaml(text)["grid"]["A1"]["loss"]["feat"] is False
    assert yaml.load(text, Loader=Yaml12Loader)["grid"]["A1"]["loss"]["feat"] == "off"  # noqa: S506


# Rules that need the whole file, other files or the student registry: only the loader checks them.
NOT_IN_JSON_SCHEMA = {
    "all losses off",  # defaults and cells together
    "unknown student",  # the registry may gain students (the schema only suggests the names)
    "unknown teacher key",
    "unknown dataset key",
    "missing search space file",
    "cell missing search space",
    "bad storage",  # a SQLAlchemy URL
    "eval beyond budget",  # two fields of budget
    "local world dataset sizes",  # the keys stay in the schema (with "Refused" in their descriptions)
    "local teacher key",
}
SPACE_NOT_IN_JSON_SCHEMA = {  # the range of the training-config field the parameter samples
    "negative lambda",
    "lr range",
    "unknown param",
    "not searchable",
    "bad categorical",
    "alias duplicate",
    "int for float leaf",
    "low >= high",
    "log low <= 0",
}


def _as_yaml(data: dict) -> object:
    return load_yaml(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("case", sorted(set(ERROR_CASES) - NOT_IN_JSON_SCHEMA))
def test_broken_study_is_refused_by_json_schema_and_loader(tmp_path, case):
    edit, field, _ = ERROR_CASES[case]
    study = copy.deepcopy(BASE)
    assert not list(validator("study").iter_errors(_as_yaml(study)))
    edit(study)
    assert list(validator("study").iter_errors(_as_yaml(study))), f"the JSON Schema accepts {case!r}"
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "mystudy.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    with pytest.raises(StudyError, match=re.escape(field)):
        load_study(tmp_path / "mystudy.yaml")


@pytest.mark.parametrize("case", sorted(set(SPACE_ERRORS) - SPACE_NOT_IN_JSON_SCHEMA))
def test_broken_search_space_is_refused_by_json_schema_and_loader(tmp_path, case):
    name, spec, field, _ = SPACE_ERRORS[case]
    space = copy.deepcopy(SPACE)
    assert not list(validator("search-space").iter_errors(_as_yaml(space)))
    space["params"][name] = spec
    assert list(validator("search-space").iter_errors(_as_yaml(space)))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(StudyError, match=re.escape(field)):
        load_search_space(tmp_path / "space.yaml", field="search_space", referenced_from="test")


@pytest.mark.parametrize(
    ("partial", "field"),
    [
        ({"optim": {"lr": 0}}, "optim.lr"),
        ({"optim": {"batch_size": 1}}, "optim.batch_size"),
        ({"optim": {"warmup_fraction": 1.5}}, "optim.warmup_fraction"),
        ({"train": {"gpu_memory_fraction": 0}}, "train.gpu_memory_fraction"),
        ({"train": {"precision": "fp16"}}, "train.precision"),
        ({"loss": {"feat": -0.5}}, "loss.feat"),
        ({"loss": {"contrastive": "clip"}}, "loss.contrastive"),
        ({"student": {"scale": "tiny"}}, "student.scale"),
        ({"data": {"num_workers": True}}, "data.num_workers"),
        ({"objective": {"metric": "r1"}}, "objective.metric"),
        ({"optimizer": {}}, "optimizer"),
    ],
)
def test_broken_config_is_refused_by_json_schema_and_loader(tmp_path, partial, field):
    assert list(validator("config").iter_errors(partial))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(partial))
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config_file(path)


def test_config_file_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: 0, batch_size: big}\ntrain: {epochs: 0}\nloss: {feet: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert [p.field for p in info.value.problems] == [
        "loss.feet",
        "optim.lr",
        "optim.batch_size",
        "train.epochs",
    ]
    assert str(info.value).startswith(f"{path}: 4 problems")
