"""The structural-schema rewrite and the committed CRD files."""

from __future__ import annotations

from typing import Any

import pytest

from hybrid_compute.api.crdgen import SchemaError, all_crds, structural, write_crds
from tests.conftest import REPOSITORY_ROOT

FORBIDDEN_IN_STRUCTURAL = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title",
                           "uniqueItems", "propertyNames", "patternProperties",
                           "discriminator"}


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += walk(node["additionalProperties"], f"{path}.*")
    return found


def test_committed_crds_match_the_models() -> None:
    changed = write_crds(REPOSITORY_ROOT, check=True)
    assert changed == [], f"regenerate with `make crds`; stale: {changed}"


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert not FORBIDDEN_IN_STRUCTURAL & node.keys(), f"{path}: {node.keys()}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), \
            f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", 0) is not None, f"{path} has default: null"


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_has_status_subresource_category_and_short_names(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert "hybrid" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_optional_fields_lose_their_null_branch() -> None:
    schema = {"properties": {"x": {"anyOf": [{"type": "string", "maxLength": 3},
                                             {"type": "null"}], "default": None,
                                   "description": "an x"}}, "type": "object"}
    assert structural(schema)["properties"]["x"] == {
        "type": "string", "maxLength": 3, "description": "an x"}


def test_references_are_inlined_with_sibling_description() -> None:
    schema = {"$defs": {"Thing": {"type": "object", "title": "Thing",
                                  "properties": {"a": {"type": "integer"}}}},
              "type": "object",
              "properties": {"thing": {"$ref": "#/$defs/Thing", "description": "it"}}}
    assert structural(schema)["properties"]["thing"] == {
        "type": "object", "properties": {"a": {"type": "integer"}}, "description": "it"}


def test_free_form_objects_preserve_unknown_fields() -> None:
    node = structural({"type": "object", "additionalProperties": True})
    assert node == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_constrained_map_keys_become_a_cel_rule() -> None:
    node = structural({"type": "object",
                       "patternProperties": {"^[a-z]+$": {"type": "string"}}})
    assert node["additionalProperties"] == {"type": "string"}
    assert node["x-kubernetes-validations"][0]["rule"] == \
        "self.all(key, key.matches('^[a-z]+$'))"


def test_exclusive_bounds_use_openapi_v3_booleans() -> None:
    node = structural({"type": "number", "exclusiveMinimum": 0})
    assert node == {"type": "number", "minimum": 0, "exclusiveMinimum": True}


def test_const_becomes_a_single_value_enum() -> None:
    assert structural({"const": "Job"}) == {"enum": ["Job"], "type": "string"}


def test_unions_without_structural_form_are_refused() -> None:
    with pytest.raises(SchemaError, match="anyOf"):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})
