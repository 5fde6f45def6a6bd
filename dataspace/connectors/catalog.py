"""A dataset's catalog entry: DCAT-AP JSON-LD with a small robot vocabulary of ours.

The entry is what a site publishes about a dataset (DESIGN.md: only metadata
crosses the boundary). It is a ``dcat:Dataset`` (DCAT-AP 3.0) with
``dct:title``, ``dct:identifier``, ``dct:license``, ``dct:publisher`` and
``dct:issued``, and **no** ``dcat:distribution``: the frames are never
downloadable, only usable through contracts and federated training.

Robot properties use the ``robot:`` namespace ``https://w3id.org/dataspace/robot#``
(ours; the terms and their datatypes are declared in :data:`CONTEXT`):

=======================  =============  =============================================
term                     type           meaning
=======================  =============  =============================================
robot:embodiment         string         robot type as the source names it
robot:stateDimensions    xsd:integer    degrees of freedom of observation.state
robot:actionDimensions   xsd:integer    degrees of freedom of action
robot:stateNames         list           per-dimension names of observation.state
robot:actionNames        list           per-dimension names of action
robot:fps                xsd:decimal    frames per second
robot:tasks              list           task descriptions
robot:episodes           xsd:integer    number of episodes
robot:frames             xsd:integer    number of frames
robot:hours              xsd:decimal    total recorded time, rounded to 0.01 h
robot:fingerprint        string         hex RFC 9162 Merkle root over episode hashes
robot:fingerprintScheme  string         how the fingerprint is computed
robot:sourceFormat       string         the format it was enrolled from
robot:declaredRanges     rdf:JSON       the holder's declared feature ranges, if any
=======================  =============  =============================================

``robot:declaredRanges`` is present only when the holder declared ranges at enrollment
(``dataspace connector enroll --ranges FILE``, :mod:`.ranges`): ``{"observation.state":
{name: [lo, hi]}, "action": {...}}`` with the dataset's own names, a claim about the
robot (its joint limits), not a statistic of the data. The quality check reads it and
lets it narrow, never widen, its out-of-range limits. Its value is a JSON literal
(JSON-LD 1.1 ``@json``), so the feature and joint names are not read as terms.

Only dataset-level aggregates appear: never a row, and never a per-episode
length, hash or statistic.

This stored entry (in the site's ``datasets`` table, and as the ``dcat`` field of the
hub's JSON catalog) keeps the licence as the holder's text. What the standards' tools
read is built from the same record when asked, by :mod:`dataspace.connectors.dcat`: the
DCAT-AP 3.0.1 catalogs (licence IRIs, DQV quality, the federated-training distribution)
of ``GET /v1/dcat`` at the connector and the hub, and the DSP catalog
(docs/dsp.md). The robot terms are declared in Turtle in ``robot.ttl`` beside this module,
served by the connector at ``GET /vocab/robot.ttl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dataspace.connectors.ranges import DECLARED_RANGES_KEY

ROBOT_NS = "https://w3id.org/dataspace/robot#"

CONTEXT: dict[str, Any] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "robot": ROBOT_NS,
    "dct:issued": {"@type": "xsd:dateTime"},
    "dcat:distribution": {"@container": "@set"},
    "robot:stateDimensions": {"@type": "xsd:integer"},
    "robot:actionDimensions": {"@type": "xsd:integer"},
    "robot:stateNames": {"@container": "@list"},
    "robot:actionNames": {"@container": "@list"},
    "robot:fps": {"@type": "xsd:decimal"},
    "robot:tasks": {"@container": "@set"},
    "robot:episodes": {"@type": "xsd:integer"},
    "robot:frames": {"@type": "xsd:integer"},
    "robot:hours": {"@type": "xsd:decimal"},
    "robot:declaredRanges": {"@type": "@json"},
}

FINGERPRINT_SCHEME = (
    "RFC 9162 Merkle root over SHA-256 of each episode's canonical bytes (dataspace/episode/v1)"
)


def catalog_entry(
    *,
    dataset_id: str,
    name: str,
    fingerprint_hex: str,
    source_format: str,
    robot_type: str,
    state_names: list[str],
    action_names: list[str],
    state_dim: int,
    action_dim: int,
    fps: float | None,
    tasks: list[str],
    episodes: int,
    frames: int,
    seconds: float,
    license: str | None,
    publisher: str | None = None,
    issued: datetime | None = None,
    declared_ranges: Mapping[str, Mapping[str, list[float]]] | None = None,
) -> dict[str, Any]:
    """The DCAT-AP JSON-LD entry of one dataset (see module docstring).

    ``declared_ranges`` is stored as given: :func:`dataspace.connectors.ranges.check_ranges`
    has checked and normalised it against the dataset's names.
    """
    issued = issued or datetime.now(UTC)
    entry: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "dcat:Dataset",
        "@id": f"urn:dataspace:dataset:{dataset_id}",
        "dct:identifier": dataset_id,
        "dct:title": name,
        "dct:description": (
            f"{episodes} episodes of {robot_type} robot data "
            f"({state_dim}-D state, {action_dim}-D action), kept on its holder's site."
        ),
        "dct:license": license or "none stated",
        "dct:issued": issued.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "dcat:distribution": [],
        "robot:embodiment": robot_type,
        "robot:stateDimensions": state_dim,
        "robot:actionDimensions": action_dim,
        "robot:stateNames": list(state_names),
        "robot:actionNames": list(action_names),
        "robot:fps": fps,
        "robot:tasks": list(tasks),
        "robot:episodes": episodes,
        "robot:frames": frames,
        "robot:hours": round(seconds / 3600.0, 2),
        "robot:fingerprint": fingerprint_hex,
        "robot:fingerprintScheme": FINGERPRINT_SCHEME,
        "robot:sourceFormat": source_format,
    }
    if declared_ranges:
        entry[DECLARED_RANGES_KEY] = {
            f: {n: [float(b) for b in r] for n, r in ranges.items()}
            for f, ranges in declared_ranges.items()
        }
    if publisher:
        entry["dct:publisher"] = {"@type": "foaf:Agent", "foaf:name": publisher}
    return entry
