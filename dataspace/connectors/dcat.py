"""DCAT-AP 3.0.1 catalogs (JSON-LD) of a connector's and of the hub's datasets, with DQV quality.

What a consumer's tools read to find robot data (DCAT-AP 3.0.1, SEMIC; DQV, W3C NOTE
2016): one ``dcat:Catalog`` with ``dct:title``, ``dct:description``, ``dct:publisher``
and its ``dcat:dataset``\\s; each ``dcat:Dataset`` with

* ``dct:license``: an SPDX licence IRI ``http://spdx.org/licenses/<id>`` when the
  holder stated a single SPDX id; a ``dct:LicenseDocument`` node labelled with the text
  for an expression (``MIT OR Apache-2.0``) or a ``LicenseRef-``; **no** ``dct:license``
  when none was stated (DCAT-AP: absent means unknown; the recommended shapes then warn);
* its quality as ``dqv:hasQualityMeasurement``: one ``dqv:QualityMeasurement`` per
  GB/T 36344 dimension scored (:data:`dataspace.quality.dimensions.DIMENSIONS`) and one
  of the overall score, each ``dqv:isMeasurementOf`` a ``dqv:Metric`` of the robot
  vocabulary whose ``dqv:inDimension`` is the dimension (``robot.ttl``);
* one ``dcat:Distribution`` whose ``dcat:accessService`` is the holder's connector (a
  ``dcat:DataService``) and whose ``dct:format`` is ``robot:FederatedTraining``: the frames
  are never downloadable, the distribution describes the federated-training service
  reached through a contract (DSP negotiation at the connector);
* the robot terms of :mod:`dataspace.connectors.catalog` (``robot.ttl`` declares them),
  among them the holder's declared feature ranges, ``robot:declaredRanges``, when the
  dataset was enrolled with them: one JSON literal (``"@type": "@json"``), checked again
  by the one check of the format (:mod:`dataspace.quality.ranges`) before it is carried.

Nodes are written with explicit ``@id``/``@type``/``@value`` so that the document means
the same to any JSON-LD processor; the context only declares prefixes. Built from
validated fields (a dataset record, a hub registry entry), never by copying a
document a remote party sent: a holder cannot place triples about another's dataset
into the hub's catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataspace.connectors.catalog import FINGERPRINT_SCHEME, ROBOT_NS
from dataspace.quality.dimensions import DIMENSIONS
from dataspace.quality.ranges import DECLARED_RANGES_KEY, Ranges, RangesError, check_declaration

#: JSON-LD prefixes of every DCAT-AP document here (terms are written as compact IRIs)
CONTEXT: dict[str, str] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "dqv": "http://www.w3.org/ns/dqv#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "robot": ROBOT_NS,
}
SPDX_LICENSES = "http://spdx.org/licenses/"
#: the EU data theme every robot dataset is in (DCAT-AP's controlled vocabulary)
THEME_TECH = "http://publications.europa.eu/resource/authority/data-theme/TECH"
THEMES = "http://publications.europa.eu/resource/authority/data-theme"
THEME_SCHEME = {"@id": THEMES, "@type": "skos:ConceptScheme", "dct:title": "Data theme"}
THEME = {
    "@id": THEME_TECH,
    "@type": "skos:Concept",
    "skos:inScheme": THEME_SCHEME,
    "skos:prefLabel": "Science and technology",
}
DATASET_URN = "urn:dataspace:dataset:"
KEY_URN = "urn:dataspace:key:"
#: a single SPDX licence id (SPDX 2.3 annex D: idstring), not a LicenseRef-/DocumentRef-
_SPDX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-+]*$")


@dataclass(frozen=True)
class DatasetFacts:
    """What the catalogs say of one dataset: dataset-level metadata only, never a row."""

    dataset_id: str
    title: str
    fingerprint: str
    robot_type: str
    source_format: str | None
    fps: float | None
    state_dim: int
    action_dim: int
    episodes: int
    frames: int
    holder_key: str  # base64 Ed25519 key: the holder's identity
    holder_name: str
    tasks: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    license: str | None = None
    issued: str | None = None  # RFC 3339
    #: dimension name -> 0..100 score (None: not scored)
    quality: Mapping[str, float | None] = field(default_factory=dict)
    quality_overall: float | None = None
    connector_url: str | None = None
    #: the holder's declared feature ranges (:func:`declared_ranges_of`; None: none)
    declared_ranges: Mapping[str, Mapping[str, list[float]]] | None = None


def declared_ranges_of(
    entry: Any,
    state_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
) -> Ranges | None:
    """The feature ranges a catalog entry declares (``robot:declaredRanges``), checked
    and normalised by :func:`dataspace.quality.ranges.check_declaration` (against the
    dataset's names when given); None when it declares none or one that check refuses
    (a catalog carries no declaration the quality check could not apply)."""
    declared = entry.get(DECLARED_RANGES_KEY) if isinstance(entry, Mapping) else None
    if declared is None:
        return None
    try:
        return check_declaration(declared, state_names, action_names)
    except RangesError:
        return None


def license_node(text: str | None) -> dict[str, Any] | None:
    """The ``dct:license`` node of a holder's licence text (module docstring), or None.

    A single SPDX id becomes its SPDX IRI (the id is checked for syntax only: offline,
    no list of ids; a mistyped id yields an IRI SPDX does not define). Anything else the
    holder stated (an expression, a ``LicenseRef-``) is a licence document labelled with
    the text; nothing stated is no licence node at all.
    """
    t = " ".join((text or "").split())
    if not t or t.lower() in ("none stated", "none", "noassertion"):
        return None
    if _SPDX_ID.match(t) and not t.startswith(("LicenseRef-", "DocumentRef-")):
        return {"@id": SPDX_LICENSES + t, "@type": "dct:LicenseDocument"}
    return {"@type": "dct:LicenseDocument", "rdfs:label": t}


def _dec(v: float) -> dict[str, str]:
    return {"@value": repr(float(v)), "@type": "xsd:decimal"}


def _int(v: int) -> dict[str, str]:
    return {"@value": str(int(v)), "@type": "xsd:integer"}


def agent(key_b64: str, name: str) -> dict[str, Any]:
    """A party (``foaf:Agent``) named by its key URN: the identity of the data space."""
    return {"@id": KEY_URN + key_b64, "@type": "foaf:Agent", "foaf:name": name}


def data_service(
    connector_url: str, holder_key: str, holder_name: str, served: Iterable[str] = ()
) -> dict[str, Any]:
    """The holder's connector as a ``dcat:DataService`` (the DSP endpoint of negotiation)
    serving the datasets ``served`` (ids)."""
    base = connector_url.rstrip("/")
    node: dict[str, Any] = {
        "@id": base + "/#service",
        "@type": "dcat:DataService",
        "dct:title": f"{holder_name} connector (Dataspace Protocol 2025-1)",
        # typed as the DCAT-AP range shapes want them (sh:class; no inference assumed)
        "dcat:endpointURL": {"@id": connector_url, "@type": "rdfs:Resource"},
        "dcat:endpointDescription": {"@id": base + "/openapi.json", "@type": "rdfs:Resource"},
        "dct:conformsTo": {"@id": "https://w3id.org/dspace/2025/1", "@type": "dct:Standard"},
        "dct:publisher": agent(holder_key, holder_name),
        "dcat:theme": THEME,
        "dcat:keyword": ["Dataspace Protocol", "federated learning", "robot data"],
    }
    ids = sorted(set(served))
    if ids:
        node["dcat:servesDataset"] = [{"@id": DATASET_URN + i} for i in ids]
    return node


def quality_measurements(f: DatasetFacts) -> list[dict[str, Any]]:
    """DQV measurements of a dataset: each scored dimension's metric, then the overall."""
    out = []
    ds = DATASET_URN + f.dataset_id
    for name in DIMENSIONS:
        score = f.quality.get(name)
        if score is None:
            continue
        out.append(
            {
                "@id": f"{ds}#quality-{name}",
                "@type": "dqv:QualityMeasurement",
                "dqv:isMeasurementOf": {"@id": f"robot:{name}Score"},
                "dqv:computedOn": {"@id": ds},
                "dqv:value": _dec(score),
            }
        )
    if f.quality_overall is not None:
        out.append(
            {
                "@id": f"{ds}#quality-overall",
                "@type": "dqv:QualityMeasurement",
                "dqv:isMeasurementOf": {"@id": "robot:overallScore"},
                "dqv:computedOn": {"@id": ds},
                "dqv:value": _dec(f.quality_overall),
            }
        )
    return out


def dataset_node(f: DatasetFacts) -> dict[str, Any]:
    """One ``dcat:Dataset`` node (module docstring)."""
    ds_id = DATASET_URN + f.dataset_id
    node: dict[str, Any] = {
        "@id": ds_id,
        "@type": "dcat:Dataset",
        "dct:identifier": f.dataset_id,
        "dct:title": f.title,
        "dct:description": (
            f"{f.episodes} episodes of {f.robot_type} robot data ({f.state_dim}-D state, "
            f"{f.action_dim}-D action), kept on its holder's site: usable through a "
            "contract and federated training, never downloadable."
        ),
        "dct:publisher": agent(f.holder_key, f.holder_name),
        "dcat:theme": THEME,
        "dcat:keyword": sorted({f.robot_type, "robot", "robot learning", *f.tasks}),
        "robot:embodiment": f.robot_type,
        "robot:stateDimensions": _int(f.state_dim),
        "robot:actionDimensions": _int(f.action_dim),
        "robot:episodes": _int(f.episodes),
        "robot:frames": _int(f.frames),
        "robot:fingerprint": f.fingerprint,
        "robot:fingerprintScheme": FINGERPRINT_SCHEME,
        "robot:tasks": list(f.tasks),
    }
    if f.state_names:
        node["robot:stateNames"] = {"@list": list(f.state_names)}
    if f.action_names:
        node["robot:actionNames"] = {"@list": list(f.action_names)}
    if f.fps is not None:
        node["robot:fps"] = _dec(f.fps)
        node["robot:hours"] = _dec(round(f.frames / f.fps / 3600.0, 2))
    if f.source_format:
        node["robot:sourceFormat"] = f.source_format
    if f.declared_ranges:
        # a JSON literal (rdf:JSON, as robot.ttl and the stored entry's context declare it):
        # its names are data, not terms
        node[DECLARED_RANGES_KEY] = {
            "@value": {
                feature: {n: [float(b) for b in r] for n, r in ranges.items()}
                for feature, ranges in f.declared_ranges.items()
            },
            "@type": "@json",
        }
    if f.issued:
        node["dct:issued"] = {"@value": f.issued, "@type": "xsd:dateTime"}
    lic = license_node(f.license)
    if lic is not None:
        node["dct:license"] = lic
    measurements = quality_measurements(f)
    if measurements:
        node["dqv:hasQualityMeasurement"] = measurements
    if f.connector_url:
        dist: dict[str, Any] = {
            "@id": ds_id + "#federated-training",
            "@type": "dcat:Distribution",
            "dct:title": "Federated training at the holder's connector",
            "dct:description": (
                "No download: the frames never leave the holder's site. A consumer "
                "negotiates a contract with the connector (Dataspace Protocol) and trains "
                "on the data through federated learning with differential privacy."
            ),
            "dcat:accessURL": {"@id": f.connector_url},
            "dcat:accessService": data_service(
                f.connector_url, f.holder_key, f.holder_name, [f.dataset_id]
            ),
            "dct:format": {"@id": "robot:FederatedTraining", "@type": "dct:MediaTypeOrExtent"},
        }
        if lic is not None:
            dist["dct:license"] = lic
        node["dcat:distribution"] = [dist]
    return node


def catalog_document(
    *,
    catalog_id: str,
    title: str,
    description: str,
    publisher: dict[str, Any],
    datasets: Iterable[DatasetFacts],
    services: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A ``dcat:Catalog`` JSON-LD document of ``datasets`` (module docstring)."""
    nodes = [dataset_node(f) for f in datasets]
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": catalog_id,
        "@type": "dcat:Catalog",
        "dct:title": title,
        "dct:description": description,
        "dct:publisher": publisher,
        "dcat:themeTaxonomy": THEME_SCHEME,
        "dcat:dataset": nodes,
    }
    svc = list(services)
    if svc:
        doc["dcat:service"] = svc
    issued = sorted(f["dct:issued"]["@value"] for f in nodes if "dct:issued" in f)
    if issued:
        doc["dct:issued"] = {"@value": issued[0], "@type": "xsd:dateTime"}
        doc["dct:modified"] = {"@value": issued[-1], "@type": "xsd:dateTime"}
    return doc
