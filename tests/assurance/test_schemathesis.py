"""Hostile input: schemathesis against the OpenAPI schemas of the hub and the connector.

In-process (ASGI), bounded examples per operation. Requests are sent unsigned
and signed by a trusted holder (the role that may call the most), so both the
authentication layer and the handlers behind it are fuzzed. Checks: no 5xx,
responses conform to the schema (status codes, content types, bodies).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import content_type_conformance, positive_data_acceptance
from starlette.testclient import TestClient

from dataspace.auth.httpsig import sign_url_request
from dataspace.connectors.service import create_app as connector_app
from dataspace.hub.app import create_app as hub_app
from dataspace.policy.identity import Identity
from tests.services.conftest import make_party

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

#: checks left out, with the finding each would report (see README, assurance table):
#: content_type_conformance: several routes answer errors in content types their OpenAPI
#:   does not document (GET /v1/log/entries and /checkpoint now document theirs);
#: positive_data_acceptance: PUT /v1/admin/datasets/{id}/policy (connector) types its body
#:   as any object, so a schema-valid {} is rightly refused (400): the schema is too loose.
KNOWN = [content_type_conformance, positive_data_acceptance]

FUZZ = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    return make_party(tmp_path_factory.mktemp("keys"), "site-a", "holder")


@pytest.fixture(scope="module")
def hub_schema(tmp_path_factory, holder):
    trust = [Identity("site-a", "holder", base64.b64decode(holder.key_id))]
    app = hub_app(tmp_path_factory.mktemp("hub") / "hub", trust=trust)
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def connector_schema(so101_site_module):
    site = so101_site_module
    app = connector_app(site, None, publish=False)
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def so101_site_module(tmp_path_factory):
    from dataspace.connectors.enroll import enroll
    from dataspace.connectors.site import Site
    from tests.conftest import SO101

    site = Site.init(Path(tmp_path_factory.mktemp("conn")) / "site", org="holder")
    enroll(site, SO101)
    return site


class RequestsSig:
    """``requests`` auth (schemathesis's ASGI transport): RFC 9421-style signature headers."""

    def __init__(self, key) -> None:
        self.key = key

    def __call__(self, r):
        body = r.body or b""
        body = body.encode() if isinstance(body, str) else body
        r.headers.update(sign_url_request(self.key, r.method, r.url, body))
        return r


def _fuzz(schema, auth) -> int:
    """Every operation, unsigned and signed; returns how many cases ran."""
    from hypothesis import given

    ran = [0]
    for result in schema.get_all_operations():
        op = result.ok()

        @FUZZ
        @given(case=op.as_strategy())
        def check(case) -> None:
            ran[0] += 1
            case.call_and_validate(excluded_checks=KNOWN)
            case.call_and_validate(auth=auth, excluded_checks=KNOWN)

        check()
    return ran[0]


def test_hub_api(hub_schema, holder) -> None:
    n = _fuzz(hub_schema, RequestsSig(holder.key))
    print(f"hub: {n} cases")
    assert n >= 40


def test_connector_api(connector_schema, so101_site_module) -> None:
    n = _fuzz(connector_schema, RequestsSig(so101_site_module.key))
    print(f"connector: {n} cases")
    assert n >= 40
