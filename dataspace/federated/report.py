"""A run's report: the model file and its SHA-256, a JSON summary and a PNG plot.

``report.json`` fields: ``run_id``, ``template``, ``contracts``, ``status``,
``model`` {``path``, ``sha256``}, ``rounds`` (per round: ``round``,
``train_loss``, ``eval_mse``, ``epsilon`` per dataset, ``sites``),
``epsilon`` (per dataset, after the last round), ``heldout_mse`` (the last
round's aggregated held-out MSE, normalised action units), and
``contribution`` (per dataset, when the quality area has computed it into
``OUT/contribution.json``: :func:`dataspace.federated.contribution.run_contributions`,
GTG-Shapley, in units of the consumer's validation MSE), with
``contribution_split`` (suggested revenue shares) and ``contribution_meaning``
(one sentence on what the number means) from ``OUT/value.json``, and
``privacy_unit`` (per dataset: ``"frame"`` or ``"episode"``, what each site's
epsilon protects, ``site.toml [training] privacy_unit``), and
``stats_source``: ``"dp"`` (the sites' DP normalisation statistics) or
``"public"`` (the consumer's own, ``dataspace train --stats-from``; no site
released any statistics).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dataspace.federated.export import EXPORT_DIR, write_lerobot_export
from dataspace.federated.server_app import load_arrays
from dataspace.federated.templates import Policy, get_template

MODEL = "model.pt"
REPORT = "report.json"
PLOT = "report.png"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_policy(out_dir: Path | str, which: str = "final.npz") -> Policy:
    """The trained policy of a run directory."""
    out = Path(out_dir)
    history = json.loads((out / "history.json").read_text())
    stats = history["stats"]
    policy = get_template(history["spec"]["template"]).build(
        stats["state_dim"], stats["action_dim"]
    )
    policy.load_state_dict(load_arrays(out / which).to_torch_state_dict())
    return policy


def write_report(out_dir: Path | str) -> dict[str, Any]:
    """Write model.pt, report.json and report.png into the run directory."""
    out = Path(out_dir)
    history = json.loads((out / "history.json").read_text())
    spec = history["spec"]
    model_sha = None
    if (out / "final.npz").exists():
        policy = load_policy(out)
        torch.save(policy.state_dict(), out / MODEL)
        model_sha = sha256_file(out / MODEL)
        write_lerobot_export(policy, spec["template"], out / EXPORT_DIR)
    rounds = history.get("rounds", [])
    epsilon = dict(history.get("stats", {}).get("epsilon", {}))
    for r in rounds:
        epsilon.update(r["epsilon"])
    sites = [*history.get("stats", {}).get("sites", []), *(s for r in rounds for s in r["sites"])]
    privacy_unit = {s["dataset-id"]: s.get("privacy_unit", "frame") for s in sites}
    contribution = None
    if (out / "contribution.json").exists():
        contribution = json.loads((out / "contribution.json").read_text())
    value = json.loads((out / "value.json").read_text()) if (out / "value.json").exists() else {}
    report = {
        "run_id": spec["run_id"],
        "template": spec["template"],
        "contracts": spec["contracts"],
        "status": history.get("status"),
        "error": history.get("error"),
        "model": {"path": MODEL if model_sha else None, "sha256": model_sha},
        "rounds": [
            {k: r[k] for k in ("round", "train_loss", "eval_mse", "epsilon", "sites", "failed")}
            for r in rounds
        ],
        "epsilon": epsilon,
        "privacy_unit": privacy_unit,
        "stats_source": history.get("stats", {}).get("source") or history.get("stats_source", "dp"),
        "heldout_mse": rounds[-1]["eval_mse"] if rounds else None,
        "contribution": contribution,
        "contribution_split": value.get("split"),
        "contribution_meaning": value.get("meaning"),
        "plot": PLOT,
    }
    (out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
    _plot(out / PLOT, rounds, history.get("stats", {}).get("epsilon", {}), contribution)
    return report


def _plot(path: Path, rounds: list[dict], eps0: dict, contribution: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 3 if contribution else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4))
    xs = [r["round"] for r in rounds]
    axes[0].plot(xs, [r["train_loss"] for r in rounds], "o-", label="train loss (DP)")
    axes[0].plot(xs, [r["eval_mse"] for r in rounds], "s-", label="held-out MSE (DP)")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("MSE (normalised actions)")
    axes[0].legend()
    datasets = sorted({d for r in rounds for d in r["epsilon"]} | set(eps0))
    for d in datasets:
        ys = [eps0.get(d, 0.0)] + [r["epsilon"].get(d, float("nan")) for r in rounds]
        axes[1].plot([0, *xs], ys, "o-", label=d)
    axes[1].set_xlabel("round (0 = statistics)")
    axes[1].set_ylabel("epsilon spent")
    if datasets:
        axes[1].legend(fontsize=7)
    if contribution:
        names = sorted(contribution)
        axes[2].bar(range(len(names)), [float(contribution[k]) for k in names])
        axes[2].set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        axes[2].set_ylabel("contribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
