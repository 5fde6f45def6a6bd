"""The hub's catalog: holders publish and withdraw entries, anyone signed searches them.

Beside the JSON search (``GET /v1/catalog``, unchanged), the federated catalog in the
standards' forms, built from the registry's validated fields (never from the JSON-LD a
holder sent, so no holder can state anything about another's dataset):

* ``GET /v1/dcat``: a DCAT-AP 3.0.1 ``dcat:Catalog`` (JSON-LD) of every published dataset
  (:mod:`dataspace.connectors.dcat`): licence IRIs, the overall quality score as a
  ``dqv:QualityMeasurement`` (the per-dimension scores are in each connector's catalog),
  the holder's connector as the distribution's ``dcat:DataService``;
* ``POST /catalog/request``: a DSP 2025-1 ``Catalog`` acting as a catalog broker: one
  nested ``Catalog`` per holder with its connector as ``DataService``. The datasets and
  their Offers are each connector's to give (``POST <connector>/catalog/request``): the
  hub does not hold the holders' policies, and DSP wants every Dataset with its Offer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from dataspace.auth.service import AnyCaller, Caller, require
from dataspace.connectors.dcat import (
    DatasetFacts,
    agent,
    catalog_document,
    data_service,
    declared_ranges_of,
)
from dataspace.connectors.dsp.messages import DSP_CONTEXT, DspError, catalog_error
from dataspace.connectors.dsp.messages import parse_catalog_request as check_catalog_request
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.hub import models as m
from dataspace.hub.state import HubDep
from dataspace.hub.store import now_iso

router = APIRouter()
Holder = Annotated[Caller, Depends(require("holder"))]


class MalformedJsonLdError(DataspaceError):
    code = "malformed_jsonld"


def check_dcat(doc: dict[str, Any], dataset_id: str) -> None:
    """A DCAT entry must be JSON-LD: an @context and an @type naming dcat:Dataset."""
    if "@context" not in doc:
        raise MalformedJsonLdError(f"catalog entry for {dataset_id!r} has no @context")
    types = doc.get("@type")
    types = types if isinstance(types, list) else [types]
    if not any(isinstance(t, str) and t.split(":")[-1].split("#")[-1] == "Dataset" for t in types):
        raise MalformedJsonLdError(
            f"catalog entry for {dataset_id!r} has @type {doc.get('@type')!r}; "
            "expected dcat:Dataset"
        )


@router.post("/v1/catalog", response_model=m.Ack, summary="Publish a dataset's catalog entry")
def publish(body: m.PublishRequest, caller: Holder, hub: HubDep) -> m.Ack:
    check_dcat(body.dcat, body.dataset_id)
    entry = body.model_dump(mode="json")
    entry.update(holder=caller.key_id, holder_name=caller.name, published_at=now_iso())
    event = {
        "dataset_id": body.dataset_id,
        "fingerprint": body.fingerprint,
        "holder": caller.key_id,
        "quality_score": body.quality_score,
    }
    return m.Ack(log_index=hub.publications.submit((caller.key_id, entry, event)))


@router.delete("/v1/catalog/{dataset_id}", response_model=m.Ack, summary="Withdraw a catalog entry")
def unpublish(dataset_id: str, caller: Holder, hub: HubDep) -> m.Ack:
    # logged before it takes effect: a withdrawal whose entry cannot be written does not happen
    if (caller.key_id, dataset_id) not in hub.store.catalog:
        raise NotFoundError(f"dataset {dataset_id!r} is not in the catalog for this holder")
    idx = hub.log.record("catalog.withdrawn", dataset_id=dataset_id, holder=caller.key_id)
    hub.store.unpublish(caller.key_id, dataset_id)
    return m.Ack(log_index=idx)


@router.get("/v1/catalog", response_model=m.CatalogPage, summary="Search the catalog")
async def catalog(
    caller: AnyCaller,
    hub: HubDep,
    request: Request,
    q: Annotated[str | None, Query(max_length=200, description="text in id, title, tasks")] = None,
    robot_type: Annotated[str | None, Query(max_length=200)] = None,
    task: Annotated[str | None, Query(max_length=200, description="text in a task")] = None,
    fps: Annotated[float | None, Query(ge=0, le=100_000)] = None,
    min_quality: Annotated[float | None, Query(ge=0, le=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    generation = hub.store.generation
    hits = search(list(hub.store.catalog.values()), q, robot_type, task, fps, min_quality)
    page = {"total": len(hits), "entries": hits[offset : offset + limit]}
    return hub.read_cache.answer(request, page, generation)


def search(
    entries: list[dict[str, Any]],
    q: str | None,
    robot_type: str | None,
    task: str | None,
    fps: float | None,
    min_quality: float | None,
) -> list[dict[str, Any]]:
    """Filter catalog entries; every given criterion must hold (case-insensitive text)."""
    out = []
    ql = q.lower() if q else None
    tl = task.lower() if task else None
    rl = robot_type.lower() if robot_type else None
    for e in entries:
        if rl is not None and (e.get("robot_type") or "").lower() != rl:
            continue
        if fps is not None and (e.get("fps") is None or abs(e["fps"] - fps) > 1e-6):
            continue
        if min_quality is not None and (
            e.get("quality_score") is None or e["quality_score"] < min_quality
        ):
            continue
        tasks = [t.lower() for t in e.get("tasks") or []]
        if tl is not None and not any(tl in t for t in tasks):
            continue
        if ql is not None:
            hay = " ".join(
                [e["dataset_id"], e.get("title") or "", e.get("robot_type") or "", *tasks]
            ).lower()
            if ql not in hay:
                continue
        out.append(e)
    out.sort(key=lambda e: (-(e.get("quality_score") or 0.0), e["dataset_id"], e["holder"]))
    return out


# --- the standards' forms (module docstring) ---------------------------------------------


def _facts(e: dict[str, Any]) -> DatasetFacts:
    """What the hub's DCAT-AP catalog says of one registry entry (its validated fields).

    From the entry the holder sent (``dcat``) only its issue date and its declared
    feature ranges, each checked: a string, and a declaration that passes the format's one
    check (:func:`dataspace.connectors.dcat.declared_ranges_of`; the hub does not hold
    the dataset's state and action names, so its shape only). Either is a value of this
    holder's own dataset node, never a triple about another's.
    """
    dcat = e.get("dcat") if isinstance(e.get("dcat"), dict) else {}
    issued = dcat.get("dct:issued")
    return DatasetFacts(
        dataset_id=e["dataset_id"],
        title=e.get("title") or e["dataset_id"],
        fingerprint=e["fingerprint"],
        robot_type=e.get("robot_type") or "unknown",
        source_format=e.get("format"),
        fps=e.get("fps"),
        state_dim=int(e.get("state_dim") or 0),
        action_dim=int(e.get("action_dim") or 0),
        episodes=int(e.get("episodes") or 0),
        frames=int(e.get("frames") or 0),
        holder_key=e["holder"],
        holder_name=e.get("holder_name") or "holder",
        tasks=tuple(e.get("tasks") or ()),
        license=e.get("license"),
        issued=issued if isinstance(issued, str) else None,
        quality_overall=e.get("quality_score"),
        connector_url=e.get("connector_url"),
        declared_ranges=declared_ranges_of(dcat),
    )


class JsonLdResponse(JSONResponse):
    media_type = "application/ld+json"


_OBJECT = {"type": "object", "required": ["@context", "@type"]}
_CATALOG_ERROR = {
    "type": "object",
    "required": ["@context", "@type"],
    "properties": {"@type": {"const": "CatalogError"}, "reason": {"type": "array"}},
}


@router.get(
    "/v1/dcat",
    summary="The federated catalog in DCAT-AP 3.0.1 (JSON-LD)",
    responses={200: {"content": {"application/ld+json": {"schema": _OBJECT}}}},
)
def dcat_catalog(caller: AnyCaller, hub: HubDep) -> JsonLdResponse:
    entries = sorted(hub.store.catalog.values(), key=lambda e: (e["dataset_id"], e["holder"]))
    served: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("connector_url"):
            served.setdefault(e["connector_url"], []).append(e)
    services = {
        url: data_service(
            url, es[0]["holder"], es[0].get("holder_name", ""), [e["dataset_id"] for e in es]
        )
        for url, es in served.items()
    }
    doc = catalog_document(
        catalog_id="urn:dataspace:catalog:" + hub.key_id,
        title=f"{hub.name}: federated catalog of robot datasets",
        description=(
            "Robot training datasets published by the data holders of this data space. "
            "Each stays on its holder's site; contracts are negotiated with the holder's "
            "connector and training is federated, with differential privacy."
        ),
        publisher=agent(hub.key_id, hub.name),
        datasets=[_facts(e) for e in entries],
        services=list(services.values()),
    )
    return JsonLdResponse(doc)


@router.post(
    "/catalog/request",
    summary="DSP 2025-1 catalog (a broker of the connectors)",
    responses={
        200: {"content": {"application/json": {"schema": _OBJECT}}},
        400: {
            "description": "a malformed message or a filter (DSP CatalogError)",
            "content": {"application/json": {"schema": _CATALOG_ERROR}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["@context", "@type"],
                        "properties": {
                            "@context": {
                                "type": "array",
                                "items": {"type": "string"},
                                "contains": {"const": DSP_CONTEXT},
                            },
                            "@type": {"const": "CatalogRequestMessage"},
                            "filter": {"type": "array", "maxItems": 0},
                        },
                    }
                }
            },
        }
    },
)
async def dsp_catalog(caller: AnyCaller, hub: HubDep, request: Request) -> JSONResponse:
    try:
        check_catalog_request(json.loads(await request.body()))
    except ValueError as e:
        return JSONResponse(catalog_error("malformed_message", [f"not JSON: {e}"]), 400)
    except DspError as e:  # the DSP catalog binding: a CatalogError body
        return JSONResponse(catalog_error(e.code, [str(e)]), e.http_status)
    holders: dict[str, dict[str, Any]] = {}
    for e in sorted(hub.store.catalog.values(), key=lambda e: (e["holder"], e["dataset_id"])):
        url = e.get("connector_url")
        if not url or e["holder"] in holders:
            continue
        holders[e["holder"]] = {
            "@id": "urn:dataspace:catalog:" + e["holder"],
            "@type": "Catalog",
            "dct:title": e.get("holder_name") or "holder",
            "service": [
                {"@id": url.rstrip("/") + "/#service", "@type": "DataService", "endpointURL": url}
            ],
        }
    cat: dict[str, Any] = {
        "@context": [DSP_CONTEXT],
        "@id": "urn:dataspace:catalog:" + hub.key_id,
        "@type": "Catalog",
        "participantId": "urn:dataspace:key:" + hub.key_id,
        "dct:title": f"{hub.name}: federated catalog",
    }
    if holders:
        cat["catalog"] = list(holders.values())
    return JSONResponse(cat)
