"""The hub itself and who is who: health, the hub's identity, the caller, participants."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends

from dataspace.auth.service import AnyCaller, Caller, require
from dataspace.errors import DataspaceError
from dataspace.hub import models as m
from dataspace.hub.state import HubDep

router = APIRouter()


@router.get("/healthz", response_model=m.Health, summary="Liveness (no signature needed)")
def healthz(hub: HubDep) -> m.Health:
    return m.Health(service="hub", name=hub.name)


@router.get("/v1/hub", response_model=m.HubInfo, summary="The hub's identity and log")
async def hub_info(caller: AnyCaller, hub: HubDep) -> m.HubInfo:
    link = hub.superlink
    return m.HubInfo(
        name=hub.name,
        public_key=hub.key_id,
        vkey=hub.log.vkey(),
        log_size=hub.log.log.size,
        superlink=m.SuperLinkInfo(address=link.address, root_certificates=link.root_certificates)
        if link
        else None,
    )


@router.get("/v1/whoami", response_model=m.WhoAmI, summary="The caller as the hub sees it")
async def whoami(caller: AnyCaller) -> m.WhoAmI:
    return m.WhoAmI(key_id=caller.key_id, name=caller.name, role=caller.role, known=caller.known)


@router.post("/v1/participants", response_model=m.Ack, summary="Register a participant's role")
def register(
    body: m.Participant, caller: Annotated[Caller, Depends(require("operator"))], hub: HubDep
) -> m.Ack:
    try:
        raw = base64.b64decode(body.public_key, validate=True)
    except ValueError as e:
        raise DataspaceError(f"public_key is not base64: {e}") from e
    if len(raw) != 32:
        raise DataspaceError(f"public_key has {len(raw)} bytes; Ed25519 needs 32")
    hub.store.register(body.public_key, body.name, body.role)
    return m.Ack()


@router.get(
    "/v1/participants", response_model=list[m.Participant], summary="Registered participants"
)
def participants(
    caller: Annotated[Caller, Depends(require("operator", "auditor"))], hub: HubDep
) -> list[m.Participant]:
    return [
        m.Participant(name=p["name"], role=p["role"], public_key=k)
        for k, p in sorted(hub.store.participants.items())
    ]
