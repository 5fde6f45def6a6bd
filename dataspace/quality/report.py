"""Quality reports: the full on-site report, the publishable one, signing, storing.

Two forms of one report (DESIGN.md: only aggregates leave a site):

* **full** (stays on site): every check with its thresholds, every flag with
  its episode, per-episode lengths, jitter and joint ranges for the plots;
* **publishable**: counts, rates, dimension scores, coarse histograms with
  labelled bins and the DP value block: no exact per-episode value (no length,
  hash, mean, index or limit derived from one episode's extremes).

The publishable report is signed by the connector's site key: Ed25519 over the
RFC 8785 canonical JSON of the report without its ``signature`` member. Its
SHA-256 (over the canonical JSON *with* the signature) goes to the site's log
as ``quality.reported`` and both forms are kept in the site table
``quality_reports`` so the catalog can show the latest score.

What the numbers mean is written into the report itself (``explain``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataspace.quality.dimensions import DimensionScore, shortfalls
from dataspace.quality.suite import CHECKS, HARD_CHECKS, SuiteResult
from dataspace.site.folder import Site
from dataspace.site.log import record

REPORT_VERSION = 1
#: coarse episode-duration bins (seconds) of the publishable histogram
DURATION_BINS = (0, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
#: coarse per-episode jitter bins (milliseconds)
JITTER_BINS = (0.0, 0.01, 0.1, 1.0, 10.0)

EXPLAIN = {
    "score": "0-100: mean of the six GB/T 36344-2018 dimension scores, each the mean of its "
    "checks' scores; an episode-level check scores the share of episodes that pass it.",
    "flag_rate": "share of episodes failing the check; flagged episodes stay on site and can "
    "be excluded from training (--exclude-flagged).",
    "coverage": "share of (joint, bin) cells of the state space that the data visits, from a "
    "Laplace-noised histogram (epsilon-DP per episode); a coarse, private indication of breadth.",
    "usable_share": "share of the dataset's motion (frames in which the robot moves) that lies "
    "in episodes without any quality flag; a run's value report credits a positive contribution "
    "only for this share and charges the rest as a typical dataset's effect on the run.",
    "contribution": "in a federated run, a dataset's contribution is its Shapley value over the "
    "rounds' updates (GTG-Shapley): the average drop in the server's validation loss that adding "
    "its update brings, over coalitions of the other sites. Positive = helped, negative = hurt; "
    "the suggested revenue split is proportional to the positive parts.",
}


# --- building -------------------------------------------------------------------------


def full_report(
    ds: dict[str, Any],
    site: Site,
    suite: SuiteResult,
    dims: Sequence[DimensionScore],
    overall: float | None,
    value: dict[str, Any],
) -> dict[str, Any]:
    """The on-site report: everything, including per-episode values."""
    p = suite.profile
    n = suite.episodes
    checks = []
    for c in suite.checks:
        checks.append(
            {
                "check": c.check,
                "dimension": c.dimension,
                "expectation": c.expectation,
                "success": c.success,
                "hard": c.check in HARD_CHECKS,
                "flagged": c.flagged,
                "flag_rate": round(c.flagged / n, 4) if n else 0.0,
                "observed": c.observed,
                "description": c.description,
            }
        )
    per_episode = {
        "episode_index": _list(p.get("episode_index")),
        "frames": _list(p.get("n_frames")),
        "duration_s": _list(p.get("duration_s")),
        "max_jitter_s": _list(p.get("max_jitter_s")),
        "dropped": _list(p.get("n_dropped")),
    }
    joints = {}
    names = list(ds.get("state_names") or []) + list(ds.get("action_names") or [])
    s_dim = int(ds.get("state_dim") or 0)
    for i in range(s_dim + int(ds.get("action_dim") or 0)):
        col = f"s_{i}" if i < s_dim else f"a_{i - s_dim}"
        mn, mx = _finite(p.get(f"min_{col}")), _finite(p.get(f"max_{col}"))
        kind = "state" if i < s_dim else "action"
        label = names[i] if i < len(names) else col
        joints[col] = {
            "name": f"{kind}:{label}",
            "min": float(mn.min()) if mn.size else None,
            "max": float(mx.max()) if mx.size else None,
            "limits": suite.thresholds.get("limits", {}).get(col),
        }
    return {
        "report_version": REPORT_VERSION,
        "form": "full",
        "dataset_id": ds["dataset_id"],
        "name": ds.get("name"),
        "fingerprint": ds.get("fingerprint"),
        "site": _site_name(site),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "fps": ds.get("fps"),
        "episodes": n,
        "frames": suite.frames,
        "score": overall,
        "dimensions": [d.to_json() for d in dims],
        # what cost points and how to win them back (the summary names them)
        "shortfalls": [
            s.to_json() for s in shortfalls(dims, _shortfall_details(ds, suite), tuple(CHECKS))
        ],
        "checks": checks,
        "skipped": suite.skipped,
        "thresholds": suite.thresholds,
        "flags": [
            {"episode_index": f.episode_index, "check": f.check, "detail": f.detail}
            for f in suite.flags
        ],
        "episodes_flagged": len({f.episode_index for f in suite.flags}),
        "per_episode": per_episode,
        "joints": joints,
        "histograms": _coarse_histograms(p),
        "value": value,
        "explain": EXPLAIN,
    }


def _shortfall_details(ds: dict[str, Any], suite: SuiteResult) -> dict[str, str]:
    """What each check found, in words, for the checks that may cost points."""
    n = suite.episodes
    out: dict[str, str] = {}
    for c in suite.checks:
        if c.check in CHECKS:
            out[c.check] = f"{c.flagged} of {n} episodes flagged"
        else:
            observed = json.dumps(c.observed, default=str) if c.observed is not None else ""
            out[c.check] = "failed" + (f" (observed {observed[:120]})" if observed else "")
    att = ds.get("attachments") or []
    absent = [str(a.get("path")) for a in att if not a.get("present")]
    if att:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        out["attachments"] = f"{len(att) - len(absent)} of {len(att)} referenced files present" + (
            f"; absent: {absent[0]}{more}" if absent else ""
        )
    if not ds.get("license"):
        out["license_stated"] = "no licence stated"
    out["joint_names"] = "the joints are named only by number"
    out["frames_readable"] = "the stored frames are missing"
    return out


def publishable_report(full: dict[str, Any]) -> dict[str, Any]:
    """Only counts, rates, scores and coarse labelled histograms (module docstring)."""
    value = json.loads(json.dumps(full["value"]))
    # the noisy histogram is DP, but only the coverage share is needed off site
    value.get("coverage", {}).pop("noisy_histogram", None)
    return {
        "report_version": REPORT_VERSION,
        "form": "publishable",
        "dataset_id": full["dataset_id"],
        "fingerprint": full["fingerprint"],
        "site": full["site"],
        "generated_at": full["generated_at"],
        "episodes": full["episodes"],
        "frames": full["frames"],
        "score": full["score"],
        "dimensions": [
            {k: d[k] for k in ("name", "gbt_36344", "iso_25012", "score")}
            | {"checks": sorted(d["checks"])}
            for d in full["dimensions"]
        ],
        "checks": [
            {k: c[k] for k in ("check", "dimension", "success", "hard", "flagged", "flag_rate")}
            for c in full["checks"]
        ],
        "skipped": full["skipped"],
        "episodes_flagged": full["episodes_flagged"],
        "histograms": full["histograms"],
        "value": value,
        "explain": full["explain"],
    }


def _coarse_histograms(p: dict[str, np.ndarray]) -> dict[str, Any]:
    dur = _finite(p.get("duration_s"))
    jit = _finite(p.get("max_jitter_s")) * 1000.0
    return {
        "episode_duration_s": _labelled(dur, DURATION_BINS, "s"),
        "max_jitter_ms": _labelled(jit, JITTER_BINS, "ms"),
    }


def _labelled(values: np.ndarray, edges: Sequence[float], unit: str) -> list[dict[str, Any]]:
    """Counts in fixed bins labelled by strings, e.g. {"bin": "10-20 s", "episodes": 3}."""
    out = []
    bounds = [*edges, None]
    for lo, hi in itertools.pairwise(bounds):
        m = values >= lo if hi is None else (values >= lo) & (values < hi)
        label = f">={lo:g} {unit}" if hi is None else f"{lo:g}-{hi:g} {unit}"
        out.append({"bin": label, "episodes": int(m.sum())})
    return out


# --- signing --------------------------------------------------------------------------


def canonical(report: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON bytes."""
    return rfc8785.dumps(report)


def sign_report(report: dict[str, Any], site: Site) -> dict[str, Any]:
    """The report with ``signature`` {alg, key, sig} by the site's Ed25519 key."""
    body = {k: v for k, v in report.items() if k != "signature"}
    sig = site.key.sign(canonical(body))
    pub = site.identity.public_key
    return body | {
        "signature": {
            "alg": "Ed25519",
            "key": base64.b64encode(pub).decode(),
            "sig": base64.b64encode(sig).decode(),
        }
    }


def verify_report(report: dict[str, Any], public_key: bytes | None = None) -> bool:
    """True when the signature verifies (by ``public_key`` when given, else the embedded key)."""
    sig = report.get("signature") or {}
    try:
        key = public_key or base64.b64decode(sig["key"])
        if public_key is not None and base64.b64decode(sig["key"]) != public_key:
            return False
        body = {k: v for k, v in report.items() if k != "signature"}
        Ed25519PublicKey.from_public_bytes(key).verify(
            base64.b64decode(sig["sig"]), canonical(body)
        )
        return True
    except (KeyError, ValueError, TypeError, InvalidSignature):
        return False


def report_sha256(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(report)).hexdigest()


# --- storing --------------------------------------------------------------------------


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """``quality_reports``: one row per check run (latest by created_at)."""
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS quality_reports (
            dataset_id VARCHAR, fingerprint VARCHAR, created_at TIMESTAMP, score DOUBLE,
            report_sha256 VARCHAR, report JSON /* publishable, signed */, signed BOOLEAN,
            full_report JSON /* on site only */)
        """
    )


def store_report(site: Site, full: dict[str, Any], public: dict[str, Any]) -> None:
    with site.db() as con:
        ensure_tables(con)
        con.execute(
            "INSERT INTO quality_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                public["dataset_id"],
                public["fingerprint"],
                datetime.now(UTC).replace(tzinfo=None),
                public["score"],
                report_sha256(public),
                canonical(public).decode(),
                "signature" in public,
                json.dumps(full, default=_json_default),
            ],
        )


def log_report(site: Site, public: dict[str, Any]) -> int:
    """Append ``quality.reported`` to the site log; its index (an error if it cannot be)."""
    return record(
        site,
        "quality.reported",
        dataset_id=public["dataset_id"],
        fingerprint=public["fingerprint"],
        report_sha256=report_sha256(public),
        score=public["score"],
    )


def latest_score(site: Site, dataset_id: str) -> float | None:
    """The latest overall quality score (0..100) of a dataset, or None if never checked."""
    with site.db() as con:
        ensure_tables(con)
        row = con.execute(
            "SELECT score FROM quality_reports WHERE dataset_id = ? "
            "ORDER BY created_at DESC LIMIT 1",
            [dataset_id],
        ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


# --- HTML -------------------------------------------------------------------------------


def render_html(report: dict[str, Any]) -> str:
    """A readable page (our own jinja2 template) with plots embedded as base64 PNG."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    plots = _plots(report)
    return env.get_template("report.html.j2").render(r=report, plots=plots)


def write_html(report: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.write_text(render_html(report), encoding="utf-8")
    return path


def _plots(report: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    per = report.get("per_episode")
    if per:  # full report: exact per-episode plots
        frames = np.asarray([x for x in per["frames"] if x is not None], dtype=float)
        if frames.size:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(frames, bins=min(30, max(5, frames.size // 2)), color="#4472c4")
            ax.set_xlabel("frames per episode")
            ax.set_ylabel("episodes")
            ax.set_title("Episode lengths")
            out["lengths"] = _png(fig)
        jit = np.asarray([x for x in per["max_jitter_s"] if x is not None], dtype=float)
        if jit.size:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.plot(np.arange(jit.size), jit * 1000.0, ".", color="#c0504d")
            tol = report.get("thresholds", {}).get("jitter_tolerance_s")
            if tol:
                ax.axhline(tol * 1000.0, ls="--", color="grey", label="tolerance")
                ax.legend()
            ax.set_xlabel("episode (order)")
            ax.set_ylabel("max |dt - 1/fps| (ms)")
            ax.set_title("Frame-interval jitter")
            out["jitter"] = _png(fig)
        joints = report.get("joints") or {}
        if joints:
            names = list(joints)
            fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names)), 3.5))
            for i, c in enumerate(names):
                j = joints[c]
                if j["min"] is not None and j["max"] is not None:
                    ax.plot([i, i], [j["min"], j["max"]], color="#4472c4", lw=4)
                if j.get("limits"):
                    ax.plot([i - 0.3, i + 0.3], [j["limits"][0]] * 2, color="#c0504d", lw=1)
                    ax.plot([i - 0.3, i + 0.3], [j["limits"][1]] * 2, color="#c0504d", lw=1)
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            ax.set_title("Per-joint ranges (blue) and limits (red)")
            out["ranges"] = _png(fig)
    else:  # publishable: coarse histograms only
        for key, title in (
            ("episode_duration_s", "Episode durations"),
            ("max_jitter_ms", "Frame-interval jitter"),
        ):
            bins = report.get("histograms", {}).get(key) or []
            if bins:
                fig, ax = plt.subplots(figsize=(6, 3))
                ax.bar([b["bin"] for b in bins], [b["episodes"] for b in bins], color="#4472c4")
                ax.tick_params(axis="x", labelrotation=45, labelsize=7)
                ax.set_title(title)
                out[key] = _png(fig)
    return out


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# --- helpers ----------------------------------------------------------------------------


def _site_name(site: Site) -> str | None:
    try:
        return site.name
    except (KeyError, OSError):
        return None


def _finite(v: Any) -> np.ndarray:
    if v is None:
        return np.zeros(0)
    a = np.asarray(v, dtype=float)
    return a[np.isfinite(a)]


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    out = []
    for x in np.asarray(v).tolist():
        out.append(None if isinstance(x, float) and not np.isfinite(x) else x)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
