"""Fixtures for the standards' tests: the services' real site and parties, the official
DSP JSON schemas resolved offline, the DCAT-AP shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

# the services' fixtures: an enrolled real dataset (SO-101), consumers' keys
from tests.services.conftest import parties, site, site_template  # noqa: F401

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
DSP = VECTORS / "dsp"


def dsp_registry() -> Registry:
    """Every DSP schema under its ``$id`` (https://w3id.org/dspace/2025/1/...): resolved
    from the vendored files, never the network (tests/vectors/README.md)."""
    resources = []
    for path in sorted(DSP.glob("*/*-schema.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc, DRAFT201909)))
    return Registry().with_resources(resources)


REGISTRY = dsp_registry()


def dsp_validator(schema_file: str) -> jsonschema.Draft201909Validator:
    """A validator of one DSP schema, e.g. ``negotiation/contract-negotiation-schema.json``."""
    schema = json.loads((DSP / schema_file).read_text())
    return jsonschema.Draft201909Validator(schema, registry=REGISTRY)


def check_dsp(schema_file: str, doc: Any) -> None:
    """Fail with every schema error of ``doc``."""
    errors = sorted(dsp_validator(schema_file).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{schema_file}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors
    )


@pytest.fixture
def dsp_check() -> Callable[[str, Any], None]:
    return check_dsp
