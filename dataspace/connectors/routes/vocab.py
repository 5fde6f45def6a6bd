"""The ODRL profile's documents, public: what a policy's ``profile`` and ``@context`` name.

A dataset's usage policy (``dataspace.policy.odrl``) names the profile
``https://w3id.org/dataspace/odrl/v1`` and the context
``https://w3id.org/dataspace/odrl/v1/context.jsonld``. Any tool that reads the policy
must be able to fetch both without an identity of this data space, so every connector
serves them, unsigned (``dataspace.auth.service.PUBLIC_VOCAB``), byte for byte as bundled:

===================================  ==========================  =============================
path                                 what                        content type
===================================  ==========================  =============================
GET /odrl/v1                         the profile's ontology      text/turtle (406 otherwise)
GET /odrl/v1/profile.ttl             the same                    text/turtle
GET /odrl                            the same: the document of   text/turtle (406 otherwise)
                                     the terms' namespace
                                     ``https://w3id.org/dataspace/odrl#``
GET /odrl/v1/context.jsonld          the JSON-LD context         application/ld+json
===================================  ==========================  =============================

Each answer carries a strong ``ETag`` (SHA-256 of the bytes; ``If-None-Match`` gets a
304), ``Cache-Control: public`` and ``Access-Control-Allow-Origin: *`` (JSON-LD 1.1 §9.2:
a context is fetched by processors running in browsers too).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Response

from dataspace.policy.odrl import context_bytes, profile_turtle

router = APIRouter(tags=["vocabulary"])

TURTLE = "text/turtle"
JSONLD = "application/ld+json"
#: the documents change only with a new release of the package: a day is safe
CACHE_CONTROL = "public, max-age=86400"


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def acceptable(accept: str | None, media_type: str) -> bool:
    """Whether an ``Accept`` header (RFC 9110 §12.5.1) admits ``media_type``.

    No header admits anything; a media range with ``q=0`` refuses what it names. The
    most specific range that matches decides (``text/turtle`` over ``text/*`` over ``*/*``).
    """
    if accept is None or not accept.strip():
        return True
    kind = media_type.split("/", 1)[0]
    best: tuple[int, float] | None = None  # (specificity, q) of the best matching range
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        rng = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            name, _, value = f.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if rng == media_type:
            spec = 2
        elif rng == f"{kind}/*":
            spec = 1
        elif rng == "*/*":
            spec = 0
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, q)
    return best is not None and best[1] > 0


def _document(
    body: bytes, media_type: str, if_none_match: str | None, accept: str | None = None
) -> Response:
    etag = _etag(body)
    headers = {
        "ETag": etag,
        "Cache-Control": CACHE_CONTROL,
        "Access-Control-Allow-Origin": "*",
        "Vary": "Accept",
    }
    if not acceptable(accept, media_type):
        return Response(
            f"this document is available as {media_type} only\n",
            status_code=406,
            media_type="text/plain",
            headers={"Vary": "Accept"},
        )
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


_TURTLE_RESPONSES: dict[int | str, dict] = {
    200: {"content": {TURTLE: {"schema": {"type": "string"}}}, "description": "Turtle"},
    304: {"description": "not modified (If-None-Match)"},
    406: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "no Turtle"},
}
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]
Accept = Annotated[str | None, Header(alias="Accept")]


@router.api_route(
    "/odrl/v1",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses=_TURTLE_RESPONSES,
    summary="The ODRL profile (its IRI): its ontology in Turtle (public)",
)
def profile(accept: Accept = None, if_none_match: IfNoneMatch = None) -> Response:
    return _document(profile_turtle(), TURTLE, if_none_match, accept)


@router.api_route(
    "/odrl",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses=_TURTLE_RESPONSES,
    summary="The document of the profile's namespace (the same ontology, public)",
)
def namespace(accept: Accept = None, if_none_match: IfNoneMatch = None) -> Response:
    return _document(profile_turtle(), TURTLE, if_none_match, accept)


@router.api_route(
    "/odrl/v1/profile.ttl",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses={k: v for k, v in _TURTLE_RESPONSES.items() if k != 406},
    summary="The ODRL profile's ontology, Turtle (public)",
)
def profile_ttl(if_none_match: IfNoneMatch = None) -> Response:
    return _document(profile_turtle(), TURTLE, if_none_match)


@router.api_route(
    "/odrl/v1/context.jsonld",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses={
        200: {"content": {JSONLD: {"schema": {"type": "object"}}}, "description": "JSON-LD"},
        304: {"description": "not modified (If-None-Match)"},
    },
    summary="The ODRL profile's JSON-LD context (public)",
)
def context(if_none_match: IfNoneMatch = None) -> Response:
    return _document(context_bytes(), JSONLD, if_none_match)
