"""The connector's catalog in DSP (``Catalog``, ``Dataset``) and in DCAT-AP 3.0.1.

Both are built from the site's dataset records, the policy in force and the latest
signed quality report, never from a stored document: a dataset without a usage policy
is not offered (DSP: a Dataset MUST have at least one ``hasPolicy`` Offer), and appears
in the DCAT-AP catalog without a distribution.

DSP 2025-1 "ACK - Catalog"/"ACK - Dataset": the Catalog's ``participantId`` is the
holder's key URN (``urn:dataspace:key:<base64>``, the ODRL assigner), its ``service`` the
connector as a ``DataService`` whose ``endpointURL`` is where the negotiation endpoints
are; each Dataset has its Offer (``hasPolicy``) and one ``Distribution`` whose
``accessService`` is that DataService and whose ``format`` is
``robot:FederatedTraining``: no download, the distribution is federated training under a
contract.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from dataspace import policy
from dataspace.connectors.dcat import DatasetFacts, catalog_document, declared_ranges_of
from dataspace.connectors.dcat import agent as dcat_agent
from dataspace.connectors.dcat import data_service as dcat_data_service
from dataspace.connectors.dsp.messages import DSP_CONTEXT
from dataspace.connectors.dsp.offers import dataset_iri, dataset_offer
from dataspace.errors import NotFoundError
from dataspace.policy.odrl import KEY_URN
from dataspace.site.folder import Site
from dataspace.site.store import DatasetRecord, list_datasets

#: the ``dct:format`` / DSP ``format`` of the one distribution of every dataset
FORMAT = "https://w3id.org/dataspace/robot#FederatedTraining"


def latest_quality(site: Site, dataset_id: str) -> tuple[dict[str, float | None], float | None]:
    """(dimension -> score, overall) of the latest signed quality report, or ({}, None).

    Read straight from the quality area's ``quality_reports`` table (as the publisher
    does): importing the quality package pulls in Great Expectations.
    """
    with site.db(read_only=True) as con:
        try:
            row = con.execute(
                "SELECT report, score FROM quality_reports WHERE dataset_id = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [dataset_id],
            ).fetchone()
        except duckdb.CatalogException:  # no quality report ever made at this site
            return {}, None
    if row is None:
        return {}, None
    report = json.loads(row[0]) if row[0] else {}
    dims = {
        str(d["name"]): None if d.get("score") is None else float(d["score"])
        for d in report.get("dimensions", [])
        if isinstance(d, dict) and "name" in d
    }
    return dims, None if row[1] is None else float(row[1])


def facts(site: Site, rec: DatasetRecord, connector_url: str | None) -> DatasetFacts:
    """What the catalogs say of one enrolled dataset."""
    dims, overall = latest_quality(site, rec.dataset_id)
    issued = rec.catalog.get("dct:issued") if rec.catalog else None
    return DatasetFacts(
        dataset_id=rec.dataset_id,
        title=rec.name,
        fingerprint=rec.fingerprint,
        robot_type=rec.robot_type,
        source_format=rec.format,
        fps=rec.fps,
        state_dim=rec.state_dim,
        action_dim=rec.action_dim,
        episodes=rec.episodes,
        frames=rec.frames,
        holder_key=site.identity.key_b64,
        holder_name=site.org,
        tasks=tuple(rec.tasks),
        state_names=tuple(rec.state_names),
        action_names=tuple(rec.action_names),
        license=rec.license,
        issued=issued if isinstance(issued, str) else None,
        quality=dims,
        quality_overall=overall,
        connector_url=connector_url,
        # stored at enrollment, checked against these names then and again here
        declared_ranges=declared_ranges_of(rec.catalog, rec.state_names, rec.action_names),
    )


def _offer(site: Site, dataset_id: str) -> dict[str, Any] | None:
    try:
        p = policy.current_policy(site, dataset_id)
    except NotFoundError:
        return None
    return dataset_offer(p, site.identity.key_b64)


def service(site: Site, endpoint: str) -> dict[str, Any]:
    """The connector as a DSP ``DataService`` (its ``endpointURL`` is the DSP base)."""
    return {
        "@id": endpoint.rstrip("/") + "/#service",
        "@type": "DataService",
        "endpointURL": endpoint,
    }


def dsp_dataset(site: Site, rec: DatasetRecord, endpoint: str) -> dict[str, Any] | None:
    """One Dataset (no ``@context``: in a Catalog), or None without a policy in force."""
    offer = _offer(site, rec.dataset_id)
    if offer is None:
        return None
    return {
        "@id": dataset_iri(rec.dataset_id),
        "@type": "Dataset",
        "dct:title": rec.name,
        "dct:identifier": rec.dataset_id,
        "hasPolicy": [offer],
        "distribution": [
            {
                "@type": "Distribution",
                "format": FORMAT,
                "accessService": service(site, endpoint)["@id"],
            }
        ],
    }


def dsp_catalog(site: Site, endpoint: str) -> dict[str, Any]:
    """The connector's DSP Catalog: every dataset with a policy in force."""
    datasets = [d for r in list_datasets(site) if (d := dsp_dataset(site, r, endpoint))]
    cat: dict[str, Any] = {
        "@context": [DSP_CONTEXT],
        "@id": "urn:dataspace:catalog:" + site.identity.key_b64,
        "@type": "Catalog",
        "participantId": KEY_URN + site.identity.key_b64,
        "dct:title": f"{site.org}: robot datasets",
        "service": [service(site, endpoint)],
    }
    if datasets:  # the schema wants at least one item when the array is there
        cat["dataset"] = datasets
    return cat


def dcat_catalog(site: Site, endpoint: str) -> dict[str, Any]:
    """The connector's DCAT-AP 3.0.1 catalog (:mod:`dataspace.connectors.dcat`)."""
    recs = list_datasets(site)
    offered = {r.dataset_id for r in recs if _offer(site, r.dataset_id) is not None}
    key = site.identity.key_b64
    return catalog_document(
        catalog_id="urn:dataspace:catalog:" + key,
        title=f"{site.org}: robot datasets",
        description=(
            f"Robot training datasets held by {site.org} on its own site. Only metadata "
            "is published: the data are used through contracts and federated training "
            "with differential privacy, never downloaded."
        ),
        publisher=dcat_agent(key, site.org),
        datasets=[facts(site, r, endpoint if r.dataset_id in offered else None) for r in recs],
        services=[dcat_data_service(endpoint, key, site.org, offered)],
    )
