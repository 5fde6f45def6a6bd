"""Write the user notebooks: `.venv/bin/python notebooks/make_notebooks.py`.

Each notebook takes its working folder from ``DATASPACE_NB_WORKDIR`` (default
``nb-work`` beside the notebook) and the number of episodes per site from
``DATASPACE_NB_EPISODES`` (default 10), so the test suite runs them on small
data in a temporary folder. They share the folder: the holder notebook makes
the sites, the consumer notebook trains on them, the auditor checks the logs;
each also runs on its own (it makes what is missing).
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

SETUP = """import os
from pathlib import Path

WORKDIR = Path(os.environ.get("DATASPACE_NB_WORKDIR", "nb-work")).resolve()
EPISODES = int(os.environ.get("DATASPACE_NB_EPISODES", "10"))
WORKDIR.mkdir(parents=True, exist_ok=True)
print("working in", WORKDIR)"""

HOLDERS = """from dataspace.demo.notebook import ensure_holders

# the three holders' sites, each with its recording session enrolled, checked and under policy
sites, datasets = ensure_holders(WORKDIR, episodes=EPISODES)
[(s.name, d["dataset_id"], d["episodes"]) for s, d in zip(sites, datasets)]"""


def md(text: str):
    return nbf.v4.new_markdown_cell(text)


def code(text: str):
    return nbf.v4.new_code_cell(text)


def holder() -> list:
    return [
        md(
            "# Data holder: enroll, check quality, set a usage policy, watch the budget\n\n"
            "You run a **connector** on your own machine. Your robot episodes never leave it: "
            "only the catalog entry, a signed quality report, DP model updates and signed log "
            "events do. This notebook does what `dataspace connector ...` does, in Python."
        ),
        code(SETUP),
        md(
            "## 1. A site and a dataset\n\n"
            "A real recording: the Unitree G1 humanoid picking up a bottle (LeRobot v2.1). "
            "We take one recording session (a range of episodes) as *our* data."
        ),
        code(
            """from dataspace.connectors.site import Site
from dataspace.demo.sources import episode_ranges, export_range, find_source

source = find_source()
session = episode_ranges(source.episodes - 4, 3, EPISODES)[0]
raw = export_range(source.path, WORKDIR / "holder-raw", session)
root = WORKDIR / "my-site"
site = Site.open(root) if (root / "site.toml").exists() else Site.init(root, "Plant North")
print(site.name, site.identity.key_b64)"""
        ),
        code(
            """from dataspace.connectors.enroll import enroll

result = enroll(site, raw, name="G1 pick-bottle, my session")  # idempotent on content
result.to_json()"""
        ),
        md("## 2. Quality report (computed on site; only aggregates leave)"),
        code(
            """from dataspace.quality.check import run_checks

outcome = run_checks(site, result.dataset_id)
print("overall score", outcome.score, "- flagged episodes:", outcome.flags)
outcome.public.get("dimensions")"""
        ),
        md(
            "## 3. Usage policy (ODRL 2.2)\n\n"
            "Who may train (any consumer here), for what purpose, with which model templates, "
            "until when, and the dataset's lifetime privacy budget."
        ),
        code(
            """import json
from datetime import UTC, datetime, timedelta
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import publish_policy

policy = build_policy(
    dataset_id=result.dataset_id,
    fingerprint=result.fingerprint,
    assigner=site.identity.key_b64,
    epsilon=40.0,
    delta=1e-4,
    purposes=["robot-policy-training"],
    until=datetime.now(UTC) + timedelta(days=90),
    max_rounds=20,
    templates=["bc-mlp"],
)
published = publish_policy(site, policy)
print("policy sha256", published.policy_sha256, "log entry", published.log_index)"""
        ),
        md("## 4. The privacy budget: budget, reserved by contracts, spent by rounds"),
        code(
            """from dataspace.policy.ledger import budget_report

[row.to_json() for row in budget_report(site)]"""
        ),
        md("The three demo holders (used by the consumer and auditor notebooks):"),
        code(HOLDERS),
    ]


def consumer() -> list:
    return [
        md(
            "# Data consumer: catalog, contract, federated training, model and privacy report\n\n"
            "You are a robot company. You never see a frame: you pick datasets from the "
            "catalog, agree a contract with each holder, and train a policy with federated "
            "DP-SGD; each holder's connector checks the contract and charges its budget "
            "before every round."
        ),
        code(SETUP),
        code(HOLDERS),
        md("## 1. The catalog (metadata and quality only)"),
        code(
            """from dataspace.demo.notebook import catalog

catalog(sites)"""
        ),
        md("## 2. A contract per dataset (the holder signs, you countersign)"),
        code(
            """from dataspace.demo.notebook import consumer_key, request_contracts

me, key = consumer_key(WORKDIR)
contract_ids = request_contracts(sites, datasets, me, key, epsilon=4.0, rounds=2)
contract_ids"""
        ),
        md("## 3. Federated training with DP-SGD (Flower simulation: same apps as deployment)"),
        code(
            """import logging
from datetime import UTC, datetime
from dataspace.federated.report import write_report
from dataspace.federated.run import run_simulation

logging.getLogger("flwr").setLevel(logging.WARNING)
out = WORKDIR / "runs" / f"nb-{datetime.now(UTC):%Y%m%d-%H%M%S%f}"
history = run_simulation(contract_ids, sites, "bc-mlp", 2, out, seed=0)
[(r["round"], round(r["train_loss"], 4), round(r["eval_mse"], 4)) for r in history["rounds"]]"""
        ),
        md("## 4. The model and the privacy report"),
        code(
            """from dataspace.demo.notebook import validation_episodes
from dataspace.demo.value import run_contributions

value = run_contributions(out, "bc-mlp", validation_episodes(WORKDIR))
report = write_report(out)
print("model", out / "model.pt", "sha256", report["model"]["sha256"])
print("validation MSE", value["validation_mse"])
{"epsilon spent per dataset": report["epsilon"], "contribution": value["contribution"],
 "suggested split": value["split"]}"""
        ),
        code(
            """from IPython.display import Image

Image(filename=str(out / "report.png"))"""
        ),
    ]


def auditor() -> list:
    return [
        md(
            "# Auditor: verify the logs, trace a dataset's uses\n\n"
            "You trust nobody: only public keys. Every connector keeps a signed, append-only "
            "Merkle-tree log (RFC 9162, C2SP checkpoints). You check every entry's signature, "
            "the tree against the signed checkpoint, and the rules: every round under a live "
            "contract, epsilon within budget."
        ),
        code(SETUP),
        code(HOLDERS),
        md("## 1. Trusted keys: each log's verifier key and each actor's public key"),
        code(
            """from dataspace.demo.notebook import consumer_key
from dataspace.demo.orchestrate import trusted_keys_file

me, _ = consumer_key(WORKDIR)
trusted = trusted_keys_file(WORKDIR, sites, [WORKDIR / "consumer" / "consumer.key.pub"])
print(trusted.read_text())"""
        ),
        md("## 2. Verify every site's log (what `dataspace audit verify` does)"),
        code(
            """from dataspace.demo.orchestrate import verify_log

reports = [verify_log(str(s.root), trusted) for s in sites]
[(r["origin"], r["size"], r["ok"], r["first_violation"]) for r in reports]"""
        ),
        code("""assert all(r["ok"] for r in reports), reports"""),
        md("## 3. Trace one dataset: who used it, for what, how much epsilon, which model"),
        code(
            """from dataspace.demo.notebook import trace

trace(sites[0], datasets[0]["dataset_id"])"""
        ),
        md(
            "## 4. Tampering is detected\n\n"
            "Change one byte of one entry in a copy of the log: verification names the entry."
        ),
        code(
            """from dataspace.demo.notebook import tampered_copy

bad = tampered_copy(sites[0], WORKDIR / "tampered")
r = verify_log(str(bad), trusted)
print(r["ok"], r["first_violation"])
assert not r["ok"]"""
        ),
    ]


def write(name: str, cells: list) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("holder.ipynb", holder())
    write("consumer.ipynb", consumer())
    write("auditor.ipynb", auditor())
