"""Write the user notebooks and run them: `.venv/bin/python notebooks/make_notebooks.py`.

Every step in them is what a user types: a `dataspace` command (run with
``subprocess``, its output printed, its ``--json`` output parsed to carry ids
to the next step) or a few lines of plain Python around files. Nothing of
``dataspace.demo`` is used, so what a reader does here carries over to their
own data.

The notebooks share a working folder, ``DATASPACE_NB_WORKDIR`` (default
``~/dataspace-notebooks``, never the repository): the holder notebook makes the
consumer's key, the holder's site and its dataset; the consumer notebook
agrees a contract and trains; the auditor notebook checks the site's log.

By default this script then executes the three notebooks in that order with
nbclient, in a new temporary working folder (or ``DATASPACE_NB_WORKDIR`` if
set), and saves them with their outputs. ``--no-execute`` only writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent
NAMES = ("holder.ipynb", "consumer.ipynb", "auditor.ipynb")

SETUP = '''import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# Your keys, sites and runs go here (never into the repository):
WORKDIR = Path(
    os.environ.get("DATASPACE_NB_WORKDIR") or Path.home() / "dataspace-notebooks"
).expanduser().resolve()
WORKDIR.mkdir(parents=True, exist_ok=True)
os.chdir(WORKDIR)  # as `cd` in a terminal: the paths below are relative to it
print("working in", WORKDIR)

# the `dataspace` command installed beside this Python (else the one on PATH)
DATASPACE = Path(sys.executable).with_name("dataspace")
DATASPACE = str(DATASPACE) if DATASPACE.exists() else shutil.which("dataspace")


# its output as plain text, as in a log file: Jupyter forces colour on, which would also
# animate the progress bars
PLAIN = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}


def dataspace(*args, check=True, show=True):
    """Run `dataspace ARGS...` as in a terminal: print what it prints, return the result.

    show=False leaves its standard output out of the printout (a long --json answer)."""
    args = [str(a) for a in args]
    print("$ dataspace", shlex.join(args))
    done = subprocess.run([DATASPACE, *args], capture_output=True, text=True, env=PLAIN)
    print(done.stdout if show else "", done.stderr, sep="", end="")
    if done.returncode:
        print(f"(exit status {done.returncode})")
        if check:
            raise RuntimeError(f"`dataspace {shlex.join(args)}` exited {done.returncode}")
    return done'''

NEEDS_HOLDER = """# made by holder.ipynb in this working folder
if not (Path("sites/acme/site.toml").exists() and Path("keys/robotco.key").exists()):
    raise RuntimeError(
        f"run holder.ipynb first with the same working folder ({WORKDIR}): "
        "it makes the holder's site and the consumer's key"
    )
dataspace("connector", "list", "sites/acme")
listing = json.loads(dataspace("connector", "list", "sites/acme", "--json", show=False).stdout)
DS = next(d["dataset_id"] for d in listing["datasets"] if d["name"] == "G1 pick-bottle")
print("dataset", DS)"""


def md(text: str):
    return nbf.v4.new_markdown_cell(text)


def code(text: str):
    return nbf.v4.new_code_cell(text)


def holder() -> list:
    return [
        md(
            "# Data holder: enroll, check quality, set a usage policy, watch the budget\n\n"
            "You run a **connector**: a site folder on your own machine. Your robot episodes "
            "never leave it: only the catalog entry, a signed quality report, DP model updates "
            "and signed log events do. Each step below is the `dataspace` command you would "
            "type in a terminal (README, *Walkthrough for each user*); the `dataspace(...)` "
            "helper only runs it and prints its output.\n\n"
            "The working folder comes from `DATASPACE_NB_WORKDIR` (default "
            "`~/dataspace-notebooks`); the consumer and auditor notebooks use the same one. "
            "To start over, delete it or point `DATASPACE_NB_WORKDIR` at a new folder."
        ),
        code(SETUP),
        md(
            "## 1. Identities\n\n"
            "The consumer you will allow to train (here *robotco*) makes its own key pair and "
            "sends you its public identity, `robotco.key.pub`. In this walkthrough we make it "
            "here, in the shared working folder, so the consumer notebook can use it. The "
            "private key file is mode 0600; a key is never overwritten."
        ),
        code(
            """if Path("keys/robotco.key").exists():  # made on an earlier run
    dataspace("keys", "show", "keys/robotco.key")
else:
    dataspace("keys", "new", "keys/robotco.key", "--name", "robotco", "--role", "consumer")"""
        ),
        md(
            "Your site: its Ed25519 key pair (`site.key`, never printed), its database and "
            "its transparency log. `connector init` refuses to overwrite a site."
        ),
        code(
            """if Path("sites/acme/site.toml").exists():  # made on an earlier run
    dataspace("keys", "show", "sites/acme/site.key.pub")
else:
    dataspace("connector", "init", "sites/acme", "--org", "ACME Robotics")"""
        ),
        md(
            "## 2. Enroll a dataset\n\n"
            "A real recording ships with the package: 16 episodes of a Unitree G1 humanoid "
            "picking up a bottle (LeRobot v2.1). Enrolling reads, validates and fingerprints it "
            "and stores it under the site; it is idempotent on content (`created` is false the "
            "second time). For your own data give its folder or file instead (LeRobot, "
            "robomimic HDF5, MCAP, Parquet/CSV)."
        ),
        code(
            """from importlib.resources import files

SAMPLE = Path(str(files("dataspace") / "data" / "unitree-g1-sample"))
enrolled = json.loads(
    dataspace(
        "connector", "enroll", "sites/acme", SAMPLE,
        "--name", "G1 pick-bottle", "--no-quality", "--json",
    ).stdout
)
DS = enrolled["dataset_id"]
print("dataset", DS, "-", enrolled["episodes"], "episodes,", enrolled["frames"], "frames")"""
        ),
        md(
            "## 3. Quality report\n\n"
            "Computed on site; only aggregates leave (the signed, publishable report). The "
            "HTML report with per-episode detail stays with you. (`enroll` without "
            "`--no-quality` runs this check at once.)"
        ),
        code("""dataspace("quality", "check", "sites/acme", DS, "--html", "acme-quality.html");"""),
        md(
            "## 4. Usage policy (ODRL 2.2)\n\n"
            "Who may train (robotco), for what purpose, with which model templates, until "
            "when, at most how many rounds per contract, and the dataset's whole-life privacy "
            "budget (epsilon, delta). Add `--manual-approval` to approve each contract request "
            "yourself (`dataspace contract approve`)."
        ),
        code(
            """from datetime import date, timedelta

UNTIL = (date.today() + timedelta(days=365)).isoformat()
dataspace(
    "connector", "policy", "sites/acme", DS,
    "--purpose", "robot-policy-training", "--consumer", "keys/robotco.key.pub",
    "--epsilon", 20, "--delta", "1e-4", "--until", UNTIL,
    "--max-rounds", 20, "--templates", "bc-mlp",
);"""
        ),
        md(
            "## 5. The privacy budget\n\n"
            "Budget, reserved by agreed contracts, spent by training rounds, remaining. Run it "
            "again after the consumer notebook has trained."
        ),
        code("""dataspace("connector", "budget", "sites/acme");"""),
        md(
            "## 6. Publish\n\n"
            "With a hub, `dataspace serve connector sites/acme --hub http://HUB:8000 --port "
            "8001` publishes the catalog entry and answers contract requests; the hub cosigns "
            "your log as a witness. This notebook needs no service: the consumer notebook asks "
            "for its contract against the site folder, as `contract request sites/acme` does."
        ),
    ]


def consumer() -> list:
    return [
        md(
            "# Data consumer: catalog, contract, federated training, model and privacy report\n\n"
            "You are a robot company (*robotco*). You never see a frame: you pick a dataset "
            "from the catalog, agree a contract with its holder, and train a policy with "
            "federated DP-SGD; the holder's connector checks the contract and charges its "
            "budget before every round. Run `holder.ipynb` first, with the same working folder."
        ),
        code(SETUP),
        md(
            "## 1. The catalog (metadata and quality, never data)\n\n"
            "With a hub running: `dataspace catalog --hub http://HUB:8000 --key "
            "keys/robotco.key`. Here, without a hub, the holder's site lists the same entries."
        ),
        code(NEEDS_HOLDER),
        md(
            "## 2. A contract\n\n"
            "You ask for an epsilon, a number of rounds, a purpose and a template; the holder's "
            "connector checks them against its policy and budget, signs, and you countersign. "
            "With a connector service: `--connector http://HOLDER:8001` instead of the site.\n\n"
            "The holder's budget (epsilon 20) is the dataset's whole life: it covers two "
            "contracts like this one, so a third run of this notebook in the same working "
            "folder is refused (start over in a new folder)."
        ),
        code(
            """from datetime import date, datetime, timedelta

UNTIL = (date.today() + timedelta(days=30)).isoformat()
contract = json.loads(
    dataspace(
        "contract", "request", "sites/acme", "--dataset", DS, "--key", "keys/robotco.key",
        "--purpose", "robot-policy-training", "--epsilon", 8, "--rounds", 2,
        "--template", "bc-mlp", "--until", UNTIL, "--json",
    ).stdout
)
CID = contract["contract_id"]
print("\\ncontract", CID, contract["state"], "- epsilon", contract["terms"]["epsilon"],
      "rounds", contract["terms"]["rounds"])
assert contract["state"] == "agreed", contract"""
        ),
        md(
            "## 3. Federated training with DP-SGD\n\n"
            "**As a consumer you train through the hub**, from your own machine, never "
            "opening a holder's folder: `dataspace train --hub http://HUB:8000 --key "
            "keys/robotco.key --contract C1,C2,C3 --out runs/first` (the hub's SuperLink "
            "runs the ServerApp, each holder's SuperNode its ClientApp; `./dev demo` shows "
            "that path end to end). This notebook has no hub, so it uses the **local mode** "
            "a holder or a developer uses on folders of their own machine: `train SITE... "
            "--contract ID,...` runs the same ServerApp and ClientApp in one process. "
            "Options: `--secagg` (the server sees only "
            "the sum of the updates), `--validation EPISODES` (your own held-out episodes: "
            "each dataset's contribution and a suggested revenue split), `--stats-from PATH` "
            "(normalise with your own statistics, so the sites release none)."
        ),
        code(
            """RUN = f"runs/{datetime.now():%Y%m%d-%H%M%S}"
dataspace(
    "train", "sites/acme", "--contract", CID, "--template", "bc-mlp",
    "--rounds", 2, "--out", RUN,
);"""
        ),
        md(
            "## 4. The model and the privacy report\n\n"
            "`report.json` holds the model's SHA-256, the loss per round and the epsilon each "
            "dataset spent; the contract bounds it."
        ),
        code(
            """report = json.loads(Path(RUN, "report.json").read_text())
spent = report["epsilon"][DS]
print("run", report["run_id"], report["status"])
print("model", Path(RUN, report["model"]["path"]), "sha256", report["model"]["sha256"])
print("held-out MSE", round(report["heldout_mse"], 4))
print(f"epsilon spent {spent:.3f} of the contract's {contract['terms']['epsilon']}")
assert report["status"] == "finished" and spent <= contract["terms"]["epsilon"]"""
        ),
        code(
            """from IPython.display import Image

Image(filename=str(Path(RUN, report["plot"])))"""
        ),
        md("The holder's ledger now shows what the run spent:"),
        code("""dataspace("connector", "budget", "sites/acme", DS);"""),
    ]


def auditor() -> list:
    return [
        md(
            "# Auditor: verify the log, trace a dataset's uses\n\n"
            "You trust nobody, only public keys. Every connector keeps a signed, append-only "
            "Merkle-tree log (RFC 9162, C2SP checkpoints). `dataspace audit verify` checks "
            "every entry's signature, the tree against the signed checkpoint, and the rules: "
            "every round under a live contract, epsilon within the contract and the budget. "
            "Run `holder.ipynb` and `consumer.ipynb` first, with the same working folder."
        ),
        code(SETUP),
        code(NEEDS_HOLDER),
        md(
            "## 1. Trusted keys\n\n"
            "One item per line: the site log's verifier key, and each actor's public identity. "
            "In a deployment add the hub's witness key (`witness hub/hub.key.pub`)."
        ),
        code(
            """Path("trusted-keys").write_text(
    "sites/acme/public.vkey\\n"
    "actor sites/acme/site.key.pub\\n"
    "actor keys/robotco.key.pub\\n"
)
print(Path("trusted-keys").read_text())"""
        ),
        md(
            "## 2. Verify the site's log\n\n"
            "A site holds its own log key, so a log that nobody else has seen could have been "
            "rebuilt and re-signed by its site. `verify` therefore counts a log as **verified** "
            "only when it is *anchored*:\n\n"
            "- a witness you trust cosigned its checkpoint: run the site with `dataspace serve "
            "connector sites/acme --hub URL` (the hub cosigns the site's log), put `witness "
            "hub/hub.key.pub` in the trusted keys and verify with `--witness-quorum 1`; or\n"
            "- it extends a checkpoint you kept from your last audit: `dataspace audit "
            "checkpoint sites/acme > acme.checkpoint` now, `--previous-checkpoint "
            "acme.checkpoint` next time.\n\n"
            "There is no witness in this notebook and no earlier audit, so plain `verify` "
            "fails with rule `unanchored`:"
        ),
        code(
            """dataspace("audit", "verify", "sites/acme", "--trusted-keys", "trusted-keys",
          check=False);"""
        ),
        md(
            "`--allow-unanchored` accepts that explicitly: every other check still runs, and "
            "the result says *self-consistent only* (`--json`: `anchored` and `verified` false)."
        ),
        code(
            """dataspace("audit", "verify", "sites/acme", "--trusted-keys", "trusted-keys",
          "--allow-unanchored")
result = json.loads(
    dataspace("audit", "verify", "sites/acme", "--trusted-keys", "trusted-keys",
              "--allow-unanchored", "--json", show=False).stdout
)
{k: result[k] for k in ("ok", "anchored", "verified", "entries_checked", "round_count",
                        "epsilon_by_dataset", "kinds")}"""
        ),
        md(
            "Keep the checkpoint for the next audit: from then on the log must extend it "
            "(append only), or `verify` names the fork."
        ),
        code(
            """kept = dataspace("audit", "checkpoint", "sites/acme").stdout
Path("acme.checkpoint").write_text(kept)
dataspace("audit", "verify", "sites/acme", "--trusted-keys", "trusted-keys",
          "--previous-checkpoint", "acme.checkpoint");"""
        ),
        md(
            "## 3. Trace one dataset\n\n"
            "Who trained on it, under which contract, for what purpose, how much epsilon each "
            "round spent, which model came out."
        ),
        code(
            """dataspace("audit", "show", "sites/acme", "--dataset", DS,
          "--trusted-keys", "trusted-keys");"""
        ),
        md(
            "## 4. Tampering is detected\n\n"
            "Export the log as a portable bundle, then rewrite, in a copy, the purpose of the "
            "first training round: the entry's signature and the tree no longer verify, and "
            "`verify` exits 4 naming the entry."
        ),
        code(
            """dataspace("audit", "export", "sites/acme", "bundle")
shutil.rmtree("bundle-tampered", ignore_errors=True)
shutil.copytree("bundle", "bundle-tampered")
entries = Path("bundle-tampered/entries.jsonl")
lines = entries.read_text().splitlines(keepends=True)
i = next(n for n, line in enumerate(lines) if '"kind":"round.started"' in line)
lines[i] = lines[i].replace('"purpose":"robot-policy-training"', '"purpose":"marketing"', 1)
entries.write_text("".join(lines))
print("changed entry", i)"""
        ),
        code(
            """bad = dataspace("audit", "verify", "bundle-tampered",
                "--trusted-keys", "trusted-keys", "--allow-unanchored", check=False)
assert bad.returncode == 4, bad.returncode"""
        ),
    ]


def notebook(cells: list) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def notebooks() -> dict[str, nbf.NotebookNode]:
    """The three notebooks, without outputs, in the order they run."""
    return {
        "holder.ipynb": notebook(holder()),
        "consumer.ipynb": notebook(consumer()),
        "auditor.ipynb": notebook(auditor()),
    }


def _clean_ids(nb: nbf.NotebookNode, name: str) -> None:
    """Stable cell ids (name-index), so rewriting a notebook changes only what changed."""
    stem = name.removesuffix(".ipynb")
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem}-{i:02d}"


def execute(nbs: dict[str, nbf.NotebookNode], workdir: Path) -> None:
    """Run the notebooks in order on one working folder, with this Python as the kernel."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as jp:
        spec = Path(jp) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "Python 3",
                    "language": "python",
                }
            )
        )
        os.environ["JUPYTER_PATH"] = jp
        os.environ["DATASPACE_NB_WORKDIR"] = str(workdir)
        for name, nb in nbs.items():
            print("running", name, "in", workdir, flush=True)
            NotebookClient(
                nb,
                kernel_name="python3",
                timeout=600,
                record_timing=False,
                resources={"metadata": {"path": str(workdir)}},
            ).execute()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    nbs = notebooks()
    if not args.no_execute:
        env = os.environ.get("DATASPACE_NB_WORKDIR")
        workdir = Path(env) if env else Path(tempfile.mkdtemp(prefix="dataspace-notebooks-"))
        workdir.mkdir(parents=True, exist_ok=True)
        execute(nbs, workdir.resolve())
    for name, nb in nbs.items():
        nb.metadata["kernelspec"] = notebook([]).metadata["kernelspec"]
        nb.metadata["language_info"] = {"name": "python"}
        _clean_ids(nb, name)
        nbf.validate(nb)
        nbf.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
