"""The hub's catalog: holders publish and withdraw entries, anyone signed searches them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from dataspace.auth.service import AnyCaller, Caller, require
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
