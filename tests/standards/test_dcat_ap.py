"""DCAT-AP 3.0.1 catalogs of the connector and the hub, validated with pyshacl against the
official shapes (tests/vectors/dcat-ap), and their DQV quality against our vocabulary.

The connector's catalog is the real answer of ``GET /v1/dcat`` over the services' real
SO-101 site after ``dataspace connector licence`` and ``dataspace quality check``; the
hub's is the real answer of the hub app after a connector published to it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from rdflib import RDF, Graph, Literal, Namespace, URIRef
from starlette.testclient import TestClient

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.connectors.catalog import ROBOT_NS
from dataspace.connectors.publisher import publish_request
from dataspace.connectors.service import create_app
from dataspace.hub.app import create_app as create_hub
from dataspace.quality.dimensions import DIMENSIONS
from dataspace.site.folder import Site
from dataspace.site.store import list_datasets
from tests.services.conftest import dataset_id, hub_parties, make_party, run_cli, set_policy
from tests.standards.conftest import check_dsp
from tests.standards.dcat_shapes import DCAT_AP, SH, drop_dangling_property_links, results, shapes

DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCT = Namespace("http://purl.org/dc/terms/")
DQV = Namespace("http://www.w3.org/ns/dqv#")
ROBOT = Namespace(ROBOT_NS)
#: recommended properties for which neither a site nor the hub holds any data (who to
#: contact, where and when recorded, the catalog's language and homepage): their
#: warnings remain, every other recommended property is filled
NO_DATA = {
    DCAT.contactPoint,
    DCT.spatial,
    DCT.temporal,
    DCT.language,
    URIRef("http://xmlns.com/foaf/0.1/homepage"),
    URIRef("http://data.europa.eu/r5r/availability"),
    DCT.type,  # the ADMS type of a publisher or a licence: not known of a holder's
    DCT.license,  # the catalog's own licence only (checked below: not a dataset's)
}


def _only_no_data_warnings(g: Graph, warnings: list[Any]) -> None:
    assert {w[2] for w in warnings} <= NO_DATA, sorted({str(w[2]) for w in warnings})
    catalogs = set(g.subjects(RDF.type, DCAT.Catalog))
    assert all(w[1] in catalogs for w in warnings if w[2] == DCT.license)


@pytest.fixture(scope="module")
def checked_site(site_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The real site with a stated licence, a quality report and a policy."""
    root = tmp_path_factory.mktemp("dcat") / "site"
    shutil.copytree(site_template, root)
    site = Site.open(root)
    ds = dataset_id(site)
    run_cli("connector", "licence", str(root), ds, "MIT", "--no-quality")
    run_cli("quality", "check", str(root), ds)
    consumer = make_party(root.parent, "alice", "consumer")
    set_policy(site, consumers=[consumer.key_id])
    return site


def _graph(doc: dict[str, Any]) -> Graph:
    # the context is inline (prefixes only): no document is fetched
    return Graph().parse(data=json.dumps(doc), format="json-ld")


def _connector_catalog(site: Site) -> tuple[dict[str, Any], bytes]:
    key = make_party(site.root.parent, f"reader-{uuid.uuid4().hex[:8]}", "consumer").key
    with TestClient(create_app(site, None, publish=False)) as c:
        r = c.get("/v1/dcat", auth=HttpSigAuth(key))
        vocab = c.get("/vocab/robot.ttl")  # public: no signature
    assert r.status_code == 200, r.text
    assert vocab.status_code == 200 and vocab.headers["content-type"].startswith("text/turtle")
    return r.json(), vocab.content


def _by_severity(res: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"Violation": [], "Warning": [], "Info": []}
    for r in res:
        out[str(r[0]).rsplit("#", 1)[-1]].append(r)
    return out


def test_connector_catalog_conforms_to_dcat_ap_shapes(checked_site):
    doc, _ = _connector_catalog(checked_site)
    g = _graph(doc)
    shapes_graph, dropped = shapes(recommended=True)
    assert dropped > 0  # the upstream defect is still there: the workaround is needed
    sev = _by_severity(results(g, shapes_graph))
    assert sev["Violation"] == [], sev["Violation"]
    # recommended properties warned about are only those no party has data for
    _only_no_data_warnings(g, sev["Warning"])
    # the shapes do bite: the same document without the catalog's publisher violates
    broken = _graph({k: v for k, v in doc.items() if k != "dct:publisher"})
    assert _by_severity(results(broken, shapes_graph))["Violation"]


def test_catalog_has_publisher_licence_iri_distribution_and_dqv(checked_site):
    doc, ttl = _connector_catalog(checked_site)
    g = _graph(doc)
    vocab = Graph().parse(data=ttl, format="turtle")
    [cat] = g.subjects(RDF.type, DCAT.Catalog)
    for p in (DCT.title, DCT.description, DCT.publisher, DCAT.dataset):
        assert g.value(cat, p) is not None, p
    [ds] = g.subjects(RDF.type, DCAT.Dataset)
    assert g.value(ds, DCT.license) == URIRef("http://spdx.org/licenses/MIT")
    dist = g.value(ds, DCAT.distribution)
    service = g.value(dist, DCAT.accessService)
    assert (service, RDF.type, DCAT.DataService) in g
    assert g.value(dist, DCT["format"]) == ROBOT.FederatedTraining
    # one measurement per GB/T 36344 dimension (and the overall), each of a metric of
    # our vocabulary whose dimension is a dqv:Dimension there
    dims = set()
    for m in g.objects(ds, DQV.hasQualityMeasurement):
        assert (m, RDF.type, DQV.QualityMeasurement) in g
        metric = g.value(m, DQV.isMeasurementOf)
        value = g.value(m, DQV.value)
        assert isinstance(value, Literal) and 0 <= float(value) <= 100
        assert (metric, RDF.type, DQV.Metric) in vocab, metric
        for d in vocab.objects(metric, DQV.inDimension):
            assert (d, RDF.type, DQV.Dimension) in vocab
            dims.add(str(d))
    assert dims == {ROBOT_NS + name for name in DIMENSIONS}
    # every robot: term the catalog uses is declared in the vocabulary
    used = {p for p in g.predicates() if str(p).startswith(ROBOT_NS)}
    used |= {o for o in g.objects() if isinstance(o, URIRef) and str(o).startswith(ROBOT_NS)}
    assert used and all((t, None, None) in vocab for t in used), used


def test_licence_none_stated_means_no_licence_node(site, parties):
    """A dataset whose holder stated no licence has no dct:license (documented choice),
    and still no violation."""
    set_policy(site, consumers=[parties["alice"].key_id])
    doc, _ = _connector_catalog(site)
    g = _graph(doc)
    [ds] = g.subjects(RDF.type, DCAT.Dataset)
    assert g.value(ds, DCT.license) is None
    sev = _by_severity(results(g, shapes(recommended=False)[0]))
    assert sev["Violation"] == []


def test_hub_catalog_conforms_and_dsp_broker_catalog_validates(checked_site, tmp_path):
    parties, trust = hub_parties(tmp_path / "keys")
    holder = parties["holder"]
    with TestClient(create_hub(tmp_path / "hub", trust=trust)) as hub:
        # what a connector publishes (its real dataset record, its public URL)
        body = publish_request(checked_site, list_datasets(checked_site)[0], "http://acme:8001")
        r = hub.post("/v1/catalog", json=body, auth=HttpSigAuth(holder.key))
        assert r.status_code == 200, r.text
        alice = HttpSigAuth(parties["alice"].key)
        r = hub.get("/v1/dcat", auth=alice)
        assert r.status_code == 200, r.text
        old = hub.get("/v1/catalog", auth=alice)
        assert old.status_code == 200 and old.json()["entries"]  # the JSON route is kept
        dsp_req = {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
                   "@type": "CatalogRequestMessage"}  # fmt: skip
        broker = hub.post("/catalog/request", json=dsp_req, auth=alice)
        bad = hub.post("/catalog/request", json=dsp_req | {"filter": [{"q": 1}]}, auth=alice)
    g = _graph(r.json())
    sev = _by_severity(results(g, shapes(recommended=True)[0]))
    assert sev["Violation"] == [], sev["Violation"]
    _only_no_data_warnings(g, sev["Warning"])
    [ds] = g.subjects(RDF.type, DCAT.Dataset)
    assert g.value(ds, DCT.license) == URIRef("http://spdx.org/licenses/MIT")
    assert g.value(g.value(ds, DCAT.distribution), DCAT.accessURL) == URIRef("http://acme:8001")
    assert broker.status_code == 200, broker.text
    check_dsp("catalog/catalog-schema.json", broker.json())
    [nested] = broker.json()["catalog"]
    assert nested["service"][0]["endpointURL"] == "http://acme:8001"
    assert bad.status_code == 400
    check_dsp("catalog/catalog-error-schema.json", bad.json())


def test_shapes_workaround_drops_only_dangling_links():
    raw = Graph().parse(DCAT_AP / "shacl_ranges.ttl")
    links = set(raw.subject_objects(SH.property))
    dangling = {(s, p) for s, p in links if (p, None, None) not in raw}
    assert dangling  # the upstream defect is still there: the workaround is needed
    assert drop_dangling_property_links(raw) == len(dangling)
    kept = set(raw.subject_objects(SH.property))
    assert kept == links - dangling and kept  # every defined shape is kept
    assert all((p, None, None) in raw for _, p in kept)
