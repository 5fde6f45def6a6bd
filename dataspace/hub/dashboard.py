"""The hub's dashboard: one page over the hub's own state, for people (issue 7).

Views: the catalog with quality scores; contracts and their state (pending
requests from the holders' connectors, with approve / reject); the privacy
budget spent, reserved and left per dataset, as each holder's site reported it
in a statement it signed (dataspace.hub.budgets; inline SVG chart); runs with loss
curves and contributions; the hub log's size, latest checkpoint, witnesses and
whether it verifies. Server-rendered HTML (jinja2) with inline SVG and a few
lines of vanilla JS: no CDN, no build step, works offline.

Mounted by ``create_app`` as an outer ASGI middleware (one line), so that
``/dashboard`` is served without HTTP message signatures, which a browser
cannot make; everything else goes on to the signed API untouched. The page
shows metadata and aggregates only (what the signed API shows an operator),
and by default only to clients on the loopback interface
(``DATASPACE_DASHBOARD=open`` serves it to every client, ``off`` to none).

Loopback alone is not enough on a shared machine: any local process, a
consumer's included, could read every contract. So the page also needs the
hub's dashboard token, a random secret the hub writes once to
``DATA/dashboard.token`` (mode 0600: only the hub's operator can read it).
Opening ``/dashboard?token=T`` once sets it as an HttpOnly, SameSite=Strict
cookie and redirects to the bare URL; ``dataspace demo --serve`` prints that URL.

Approve / reject goes to the holder's connector admin API
(``POST /v1/admin/contracts/{id}/approve|reject``), signed with a holder key
the dashboard was given: ``DATASPACE_DASHBOARD_HOLDER_KEYS`` lists key files
(``os.pathsep``-separated) of the holders who use this dashboard on their own
machine. Without a holder key the dashboard shows hub-registered contracts only.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dataspace.audit import TrustedKeys, Verifier, checkpoint_of_note, verify_source
from dataspace.audit.note import raw_public
from dataspace.audit.witnessing import known_witness_keys
from dataspace.auth.client import (
    ServiceRefusedError,
    ServiceUnavailableError,
    call,
    signed_client,
)
from dataspace.auth.service import install_error_handlers, send_error
from dataspace.errors import DataspaceError, NotFoundError, RefusedError
from dataspace.hub.store import ConflictError
from dataspace.hub.witnesses import holder_peers
from dataspace.site.identity import load_private_key

PREFIX = "/dashboard"
TOKEN_FILE = "dashboard.token"
COOKIE = "dataspace_dashboard"
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)


class DashboardForbiddenError(RefusedError):
    code = "dashboard_forbidden"


class DashboardTokenError(DataspaceError):
    """No dashboard token, or the wrong one."""

    http_status = 401
    code = "dashboard_token"


class ConnectorUnreachableError(DataspaceError):
    http_status = 502
    code = "connector_unreachable"


def _holder_keys() -> dict[str, Any]:
    """Holder keys this dashboard may sign admin calls with, by key id (base64)."""
    out = {}
    for p in filter(None, os.environ.get("DATASPACE_DASHBOARD_HOLDER_KEYS", "").split(os.pathsep)):
        key = load_private_key(Path(p))
        out[base64.b64encode(key.public_key().public_bytes_raw()).decode()] = key
    return out


class Views:
    """Everything the page shows, computed from the hub's store and log."""

    def __init__(self, store: Any, hub_log: Any) -> None:
        self.store, self.hub_log = store, hub_log
        self._verified: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    # -- catalog, contracts, budget, runs ------------------------------------------------
    def catalog(self) -> list[dict[str, Any]]:
        rows = sorted(
            self.store.catalog.values(), key=lambda e: (e.get("holder_name", ""), e["dataset_id"])
        )
        return [
            {
                "dataset_id": e["dataset_id"],
                "title": e.get("title") or e["dataset_id"],
                "holder": e.get("holder_name") or e.get("holder", "")[:8],
                "holder_key": e.get("holder"),
                "robot_type": e.get("robot_type"),
                "episodes": e.get("episodes"),
                "frames": e.get("frames"),
                "fps": e.get("fps"),
                "hours": round(e["frames"] / e["fps"] / 3600, 2)
                if e.get("frames") and e.get("fps")
                else None,
                "quality": e.get("quality_score"),
                "connector_url": e.get("connector_url"),
            }
            for e in rows
        ]

    def connector_contracts(self, catalog: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
        """Contracts (pending ones included) from the connectors of holders we have keys for."""
        keys = _holder_keys()
        seen, out, errors = set(), [], []
        for e in catalog:
            url, holder = e.get("connector_url"), e.get("holder_key")
            if not url or holder not in keys or (url, holder) in seen:
                continue
            seen.add((url, holder))
            try:
                with signed_client(url, keys[holder]) as c:
                    body = call(c, "GET", "/v1/admin/contracts")
                for k in body.get("contracts", []):
                    flat = {**k.get("terms", {}), **{a: b for a, b in k.items() if a != "terms"}}
                    out.append({**flat, "connector_url": url, "holder_name": e["holder"]})
            except Exception as ex:  # a connector that is down must not break the page
                errors.append(f"{e['holder']} ({url}): {ex}")
        return out, errors

    def contracts(self, catalog: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
        names = {e["dataset_id"]: e["holder"] for e in catalog}
        consumers = {k: p["name"] for k, p in self.store.participants.items()}
        merged: dict[str, dict[str, Any]] = {}
        for c in self.store.contracts.values():
            merged[c["contract_id"]] = dict(c)
        remote, errors = self.connector_contracts(catalog)
        for c in remote:
            cid = c.get("contract_id")
            if cid:
                merged[cid] = {**merged.get(cid, {}), **c}
        rows = []
        for c in merged.values():
            consumer = c.get("consumer")
            if isinstance(consumer, dict):
                consumer = consumer.get("key") or consumer.get("public_key")
            rows.append(
                {
                    "contract_id": c["contract_id"],
                    "dataset_id": c.get("dataset_id"),
                    "holder": names.get(c.get("dataset_id"), c.get("holder_name", "")),
                    "consumer": consumers.get(
                        consumer, c.get("consumer_name") or (consumer or "")[:10]
                    ),
                    "purpose": c.get("purpose"),
                    "epsilon": c.get("epsilon"),
                    "rounds": c.get("rounds"),
                    "until": (c.get("until") or "")[:10],
                    "state": c.get("state", "?"),
                    "connector_url": c.get("connector_url"),
                }
            )
        order = {"pending": 0, "agreed": 1, "active": 1}
        rows.sort(key=lambda r: (order.get(r["state"], 2), r["holder"] or "", r["contract_id"]))
        return rows, errors

    def budgets(self, catalog: list[dict]) -> list[dict[str, Any]]:
        """Per catalog entry: its budget as the holder's site last reported it (signed).

        Only the sites' own statements (``POST /v1/budget``, dataspace.hub.budgets):
        lifetime, spent, reserved and left from the ledger, never the contracts' grants.
        A dataset whose connector has not reported yet says so.
        """
        out = []
        for e in catalog:
            r = self.store.budgets.get((e.get("holder_key"), e["dataset_id"]))
            row: dict[str, Any] = {
                "dataset_id": e["dataset_id"],
                "holder": e["holder"],
                "reported": r is not None,
            }
            if r is not None:
                row |= {
                    "budget": r["budget"],
                    "spent": r["spent"],
                    "reserved": r["reserved"],
                    "left": r["remaining"],
                    "delta_budget": r["delta_budget"],
                    "delta_spent": r["delta_spent"],
                    "delta_left": r["delta_remaining"],
                    "live_contracts": r["live_contracts"],
                    "rounds": r["rounds"],
                    "reported_at": r["reported_at"][:19].replace("T", " "),
                    "site_log_size": r["site_log_size"],
                }
            out.append(row)
        return out

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for run in sorted(
            self.store.runs.values(), key=lambda r: r.get("created_at", ""), reverse=True
        ):
            rounds = run.get("rounds", [])
            contrib: dict[str, float] = {}
            for r in rounds:
                for d, v in (r.get("contributions") or {}).items():
                    contrib[d] = contrib.get(d, 0.0) + float(v)
            total = sum(max(0.0, v) for v in contrib.values())
            out.append(
                {
                    "run_id": run["run_id"],
                    "created_at": (run.get("created_at") or "")[:19].replace("T", " "),
                    "template": run.get("template"),
                    "contracts": len(run.get("contract_ids", [])),
                    "rounds": [{"round": r["round"], "loss": r.get("loss")} for r in rounds],
                    "last_loss": rounds[-1].get("loss") if rounds else None,
                    "contributions": [
                        {
                            "dataset_id": d,
                            "value": v,
                            "share": (max(0.0, v) / total) if total > 0 else None,
                        }
                        for d, v in sorted(contrib.items())
                    ],
                    "svg": loss_svg([r.get("loss") for r in rounds]),
                }
            )
        return out

    # -- the hub's log --------------------------------------------------------------------
    def log(self) -> dict[str, Any]:

        log = self.hub_log.log
        size = int(log.size)
        note = log.checkpoint() if size else b""
        witnesses, witnessed_size, stale = [], None, []
        if note:  # the latest checkpoint its witnesses cosigned (it may trail the latest)
            status = log.witnessing_status()  # reads the kept checkpoints once
            rows = status["witnesses"]
            witnesses = sorted(w["witness"] for w in rows if w["cosigned_witnessed"])
            witnessed_size = status["witnessed_size"] if witnesses else None
            # connectors failing too long to hold it back (dataspace.audit.witnesspolicy)
            stale = [
                {"witness": w["witness"], "since_size": w["stale_since_size"]}
                for w in rows
                if w["stale"]
            ]
        return {
            "origin": self.hub_log.origin,
            "size": size,
            "checkpoint": note.decode("utf-8", "replace"),
            "witnesses": witnesses,
            "witnessed_size": witnessed_size,
            "stale_witnesses": stale,
            "verification": self.verify(size, note),
        }

    def verify(self, size: int, note: bytes) -> dict[str, Any]:
        """The hub's log as an auditor checks it, cached by what it checks.

        Verified means anchored (DESIGN.md, "Threat model"): with witnesses (the
        holders' connectors the hub pushes to), their witnessed checkpoint is checked
        against the hub's key and theirs, and must carry a cosignature of one of them;
        without any, only the log's self-consistency can be checked, and ``anchored``
        and ``detail`` say so.
        """
        peers = holder_peers(self.store)
        witnesses = [v for p in peers for v in known_witness_keys(p)]
        log = self.hub_log.log
        if size and witnesses:  # what they cosigned (it may trail the latest checkpoint)
            note = log.witnessed_checkpoint()
        checked = checkpoint_of_note(note).size if size else 0
        key = (size, note, tuple(w.key_id for w in witnesses))
        with self._lock:
            if self._verified and self._verified[0] == key:
                return self._verified[1]
            if not size:
                result = {"ok": True, "anchored": False, "detail": "empty log", "entries": 0}
            else:
                trusted = TrustedKeys(
                    logs=[Verifier(self.hub_log.origin, raw_public(self.hub_log.key))],
                    witnesses=witnesses,
                )
                # strict where witnesses exist; none at all: self-consistency, said as such
                rep = verify_source(log, trusted, checkpoint=note, allow_unanchored=not witnesses)
                result = {
                    "ok": rep.ok,
                    "anchored": rep.anchored,
                    "detail": self._detail(rep, checked, size),
                    "entries": rep.entries_checked,
                }
            self._verified = (key, result)
            return result

    @staticmethod
    def _detail(rep: Any, checked: int, size: int) -> str:
        """One line on what the hub log's check covered (for the page's log section)."""
        if not rep.ok:
            return str(rep.first)
        if not rep.anchored:
            return (
                "self-consistent only: no witness cosigned the log (no holder connector "
                "witnesses it yet), so only its own signatures and tree were checked"
            )
        who = ", ".join(rep.witnesses)
        tail = f"; entries {checked}..{size - 1} await cosignatures" if checked < size else ""
        return f"{checked} entries and the tree verify, cosigned by {who}{tail}"

    def page(self) -> dict[str, Any]:
        catalog = self.catalog()
        contracts, errors = self.contracts(catalog)
        budgets = self.budgets(catalog)
        return {
            "catalog": catalog,
            "contracts": contracts,
            "pending": sum(c["state"] == "pending" for c in contracts),
            "budgets": budgets,
            "budget_svg": budget_svg(budgets),
            "runs": self.runs(),
            "log": self.log(),
            "errors": errors,
            "can_approve": bool(_holder_keys()),
        }


def loss_svg(losses: list[float | None], w: int = 340, h: int = 130) -> str:
    """An inline SVG line chart of loss per round (markup built from numbers only)."""
    pts = [(i + 1, float(v)) for i, v in enumerate(losses) if v is not None and v == v]
    if not pts:
        return ""
    pad = 56
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.1 or 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - pad - 8)

    bottom = h - 24

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - 10)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"/>' for x, y in pts)
    return (
        f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        f'aria-label="loss per round">'
        f'<line x1="{pad}" y1="{bottom}" x2="{w - 8}" y2="{bottom}" class="axis"/>'
        f'<line x1="{pad}" y1="8" x2="{pad}" y2="{bottom}" class="axis"/>'
        f'<text x="{pad - 4}" y="16" text-anchor="end">{y1:.3g}</text>'
        f'<text x="{pad - 4}" y="{bottom}" text-anchor="end">{y0:.3g}</text>'
        f'<text x="6" y="{h / 2:.0f}">loss</text>'
        f'<text x="{w / 2:.0f}" y="{h - 4}" text-anchor="middle">round {x0}–{xs[-1]}</text>'
        f'<polyline points="{line}" class="loss"/><g class="dots">{dots}</g></svg>'
    )


def budget_svg(rows: list[dict[str, Any]], w: int = 1000) -> str:
    """Horizontal stacked bars per dataset: spent, reserved and left of its lifetime budget,
    as the holder's site reported them; a dataset without a report says so."""
    if not rows:
        return ""
    bar, gap, label = 22, 14, 280
    h = len(rows) * (bar + gap) + 24
    top = max((r["budget"] for r in rows if r["reported"]), default=0.0) or 1.0
    scale = (w - label - 300) / top
    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" '
        'aria-label="privacy budget per dataset, as each site reported it">'
    ]
    for i, r in enumerate(rows):
        y = 8 + i * (bar + gap)
        name = jinja2.utils.markupsafe.escape(f"{r['holder']} · {r['dataset_id']}")
        parts.append(f'<text x="0" y="{y + 15}" class="lbl">{name}</text>')
        if not r["reported"]:
            text = "no budget report from the holder&#39;s site yet"
            parts.append(f'<text x="{label}" y="{y + 15}" class="none">{text}</text>')
            continue
        x = float(label)
        for part, cls in (("spent", "spent"), ("reserved", "reserved"), ("left", "left")):
            width = max(0.0, r[part]) * scale
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar}" class="{cls}"/>'
            )
            x += width
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + 15}">ε {r["spent"]:.2f} spent · '
            f"{r['reserved']:.2f} reserved · {r['left']:.2f} left of {r['budget']:.2f}</text>"
        )
    ly = h - 10
    legend = (("spent", "spent"), ("reserved", "reserved by live contracts"), ("left", "left"))
    x = label
    for cls, text in legend:
        parts.append(
            f'<rect x="{x}" y="{ly - 9}" width="10" height="10" class="{cls}"/>'
            f'<text x="{x + 14}" y="{ly}">{text}</text>'
        )
        x += 30 + 7 * len(text)
    parts.append("</svg>")
    return "".join(parts)


def dashboard_app(store: Any, hub_log: Any) -> FastAPI:
    views = Views(store, hub_log)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)  # the services' one error shape, here too

    @app.get(PREFIX, response_class=HTMLResponse)
    @app.get(PREFIX + "/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        ctx = views.page()
        return HTMLResponse(_ENV.get_template("dashboard.html").render(**ctx))

    @app.get(PREFIX + "/api/state")
    def state() -> JSONResponse:
        ctx = views.page()
        ctx.pop("budget_svg")
        for r in ctx["runs"]:
            r.pop("svg")
        return JSONResponse(ctx)

    @app.post(PREFIX + "/api/contracts/{contract_id}/{decision}")
    async def decide(contract_id: str, decision: str, request: Request) -> JSONResponse:
        if decision not in ("approve", "reject"):
            raise NotFoundError(f"unknown decision {decision!r}")
        if request.headers.get("x-dashboard") != "1":  # set by the page's JS: no cross-site forms
            raise DashboardForbiddenError("missing X-Dashboard header")
        catalog = views.catalog()
        contracts, _ = views.contracts(catalog)
        c = next((c for c in contracts if c["contract_id"] == contract_id), None)
        if c is None or not c.get("connector_url"):
            raise NotFoundError(f"no pending contract {contract_id}")
        holder = next(
            (e["holder_key"] for e in catalog if e["dataset_id"] == c["dataset_id"]), None
        )
        key = _holder_keys().get(holder)
        if key is None:
            raise DashboardForbiddenError("this dashboard holds no key of that dataset's holder")
        body = {} if decision == "approve" else {"reason": "rejected on the hub dashboard"}
        try:
            with signed_client(c["connector_url"], key) as cl:
                out = call(cl, "POST", f"/v1/admin/contracts/{contract_id}/{decision}", json=body)
        except ServiceRefusedError as e:
            raise ConflictError(str(e)) from e
        except (ServiceUnavailableError, httpx.HTTPError) as e:
            raise ConnectorUnreachableError(f"connector unreachable: {e}") from e
        return JSONResponse({"ok": True, "contract": out})

    return app


def dashboard_token(data_dir: Path | str) -> str:
    """The hub's dashboard secret, made once at ``DATA/dashboard.token`` (mode 0600)."""
    path = Path(data_dir) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class Dashboard:
    """Outer ASGI middleware: ``/dashboard*`` to the dashboard app, the rest to the hub."""

    def __init__(self, app: ASGIApp, *, store: Any, hub_log: Any, token: str) -> None:
        self.app = app
        self.dashboard = dashboard_app(store, hub_log)
        self.mode = os.environ.get("DATASPACE_DASHBOARD", "local")
        self.token = token
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("",))[0]
        if not (self.mode == "open" or (self.mode == "local" and client in _LOOPBACK)):
            error = DashboardForbiddenError("the dashboard is served to local clients only")
            await send_error(scope, receive, send, error)
            return
        given = _query_value(scope.get("query_string", b""), b"token")
        if given and _same(given, self._token):
            # trade the token in the URL for a cookie, and drop it from the address bar
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path={PREFIX}"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        # percent-encoded: no byte of the path can end the header
                        (b"location", urllib.parse.quote(path, safe="/").encode()),
                        (b"set-cookie", cookie.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if not _same(_cookie(scope, COOKIE.encode()), self._token):
            error = DashboardTokenError("open the dashboard with its token: /dashboard?token=...")
            await send_error(scope, receive, send, error)
            return
        await self.dashboard(scope, receive, send)


def _same(given: bytes, token: bytes) -> bool:
    """Constant-time comparison of raw bytes: any header or query bytes (non-ASCII,
    not UTF-8) compare, and are simply not the token."""
    return hmac.compare_digest(given, token)


def _query_value(query: bytes, name: bytes) -> bytes:
    """The first value of ``name`` in a raw query string, percent-decoded, as bytes
    (never decoded as text: a hostile query cannot make this fail)."""
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if urllib.parse.unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return urllib.parse.unquote_to_bytes(value.replace(b"+", b" "))
    return b""


def _cookie(scope: Scope, name: bytes) -> bytes:
    """The value of cookie ``name`` in the request's Cookie headers, as raw bytes."""
    for k, v in scope.get("headers", []):
        if k == b"cookie":
            for part in v.split(b";"):
                key, _, value = part.strip().partition(b"=")
                if key == name:
                    return value
    return b""
