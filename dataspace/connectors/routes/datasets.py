"""The site's datasets as the data space sees them (catalog metadata only), and republishing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from dataspace.auth.service import AnyCaller, Caller, public_detail, require
from dataspace.connectors import models as m
from dataspace.connectors.publisher import publish_request
from dataspace.connectors.state import ConnectorDep
from dataspace.errors import NotFoundError
from dataspace.site.folder import Site
from dataspace.site.store import DatasetRecord, get_dataset, list_datasets

router = APIRouter()


def dataset_view(site: Site, rec: DatasetRecord) -> dict[str, Any]:
    return publish_request(site, rec, None) | {"holder": site.identity.key_b64}


@router.get("/healthz", response_model=m.Health, summary="Liveness (no signature needed)")
def healthz(conn: ConnectorDep) -> m.Health:
    p = conn.publisher
    return m.Health(
        service="connector",
        name=conn.site.name,
        published=None if p is None else p.done.is_set(),
        # public (no signature): the error text without the site's paths
        publish_error=None
        if p is None or p.error is None
        else public_detail(p.error, [conn.site.root]),
    )


@router.get("/v1/datasets", response_model=list[m.DatasetView], summary="This site's datasets")
def datasets(caller: AnyCaller, conn: ConnectorDep) -> list[dict[str, Any]]:
    return [dataset_view(conn.site, r) for r in list_datasets(conn.site)]


@router.get("/v1/datasets/{dataset_id}", response_model=m.DatasetView, summary="One dataset")
def dataset(dataset_id: str, caller: AnyCaller, conn: ConnectorDep) -> dict[str, Any]:
    try:
        rec = get_dataset(conn.site, dataset_id)
    except NotFoundError as e:  # the store's text names the site folder; this one does not
        raise NotFoundError(f"dataset {dataset_id!r} is not enrolled at this site") from e
    return dataset_view(conn.site, rec)


@router.post("/v1/admin/publish", response_model=m.Published, summary="Publish to the hub now")
def republish(
    caller: Annotated[Caller, Depends(require("holder"))], conn: ConnectorDep
) -> m.Published:
    if conn.publisher is None:
        raise NotFoundError("this connector was started without a hub")
    return m.Published(published=conn.publisher.publish_once())
