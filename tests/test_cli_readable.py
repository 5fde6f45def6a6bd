"""Issue 14: what the ``dataspace`` command prints is readable and complete.

Messages print their brackets; no identifier is cut in an 80-column terminal
(or a file with COLUMNS=80); library logs are silent without ``--verbose`` and
carry no colour codes into files; ``--help`` and argument errors are fast; the
quality summary names the checks that cost points and how to fix them; a
refusal lists the allowed values; help names real templates; a site is named
the same way (positional SITE, ``--site`` kept) in every command.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from dataspace.cli import cli, main
from dataspace.cli._ui import ACTIONS, ROLES, TEMPLATE_NAMES, _move_to_front
from tests.conftest import REPO, SO101

#: a consumer's view: a narrow terminal, output not a terminal (CliRunner), no colours
NARROW = {"COLUMNS": "80", "NO_COLOR": "1"}
ELLIPSIS = "…"


def run(*args: str | Path, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env or NARROW)


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``dataspace ARGS`` through ``main`` (its error handling), in this process."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- 1. messages are text, not Rich markup ------------------------------------------------


def test_error_messages_keep_brackets_and_never_crash(tmp_path: Path, capsys) -> None:
    site = tmp_path / "site [training]"
    assert main(["connector", "init", str(site), "--org", "acme"]) == 0
    code, _, err = run_main(capsys, "connector", "show", site, "[/x] [training] [bc-mlp]")
    assert code == 1, err
    assert "Traceback" not in err and "MarkupError" not in err
    assert "'[/x] [training] [bc-mlp]' is not enrolled" in err
    assert "site [training]" in err


def test_escape_prints_literally() -> None:
    from dataspace.cli._ui import escape

    console = Console(record=True, width=200)
    console.print(f"[red]error:[/red] {escape('site.toml [training] bad; [/x] here')}")
    assert console.export_text().strip() == "error: site.toml [training] bad; [/x] here"


# --- 2. nothing a user copies is cut at 80 columns -----------------------------------------


def test_catalog_at_80_columns_prints_ids_and_urls_whole(tmp_path: Path, monkeypatch) -> None:
    import dataspace.cli.catalog as client  # the command calls what it imported

    key = tmp_path / "bob.key"
    assert run("keys", "new", key, "--name", "bob", "--role", "consumer").exit_code == 0
    entries = [
        {
            "dataset_id": f"ds-06fbab0669afa5b{i}",
            "robot_type": "so101_follower",
            "fps": 30,
            "episodes": 12,
            "frames": 3000,
            "quality_score": 88.75,
            "holder_name": "ACME Robotics",
            "holder": "k" * 44,
            "connector_url": f"http://connector-{i}.plant-north.example.org:8001",
        }
        for i in range(2)
    ]

    @contextlib.contextmanager
    def fake_client(url, key):
        yield None

    monkeypatch.setattr(client, "signed_client", fake_client)
    monkeypatch.setattr(client, "call", lambda *a, **k: {"total": 2, "entries": entries})
    r = run("catalog", "--hub", "http://hub.example:8000", "--key", key)
    assert r.exit_code == 0, r.output
    assert ELLIPSIS not in r.stdout
    for e in entries:
        assert e["dataset_id"] in r.stdout and e["connector_url"] in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80 or "connector " in r.stdout


def test_audit_show_at_80_columns_prints_every_id_whole(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dataspace.audit.log import TransparencyLog
    from dataspace.audit.note import raw_public
    from tests.audit.conftest import ORIGIN, events

    key, consumer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", ORIGIN, key)
    log.append_many(events(key, consumer))
    r = run("audit", "show", tmp_path / "log", "--contract", "c1")
    assert r.exit_code == 0, r.output
    assert ELLIPSIS not in r.stdout
    consumer_b64 = base64.b64encode(raw_public(consumer)).decode()
    for value in ("11" * 32, "22" * 32, consumer_b64, "r1/1", "r1/2", "ds1", "c1"):
        assert value in r.stdout, value


def _demo_result(**over) -> SimpleNamespace:
    site = dict(
        site="plant-north",
        episode_range="000-011",
        episodes=12,
        frames=5022,
        quality=94.0,
        epsilon_run=7.99,
        epsilon_spent=7.99,
        epsilon_left=72.0,
        epsilon_budget=80.0,
        heldout_mse=0.0936,
        contribution=0.0372,
        share=0.37,
        log_verified=True,
        log_status="verified",
        log_size=9,
        log_problem=None,
    )
    sites = [SimpleNamespace(**site), SimpleNamespace(**(site | {"site": "plant-[east]"}))]
    return SimpleNamespace(run_id="demo-20261203-045744-88d268", engine="simulation", sites=sites)


def test_demo_summary_at_80_columns_cuts_nothing() -> None:
    from dataspace.cli.demo import print_summary

    console = Console(record=True, width=80, force_terminal=False)
    print_summary(console, _demo_result())
    text = console.export_text()
    assert ELLIPSIS not in text
    for value in ("demo-20261203-045744-88d268", "plant-north", "plant-[east]", "72.00 / 80"):
        assert value in text, value
    assert max(len(line) for line in text.splitlines()) <= 80
    wide = Console(record=True, width=200)
    print_summary(wide, _demo_result())
    assert "┃ site" in wide.export_text()  # a table where it fits


# --- 3. library logs: silent unless --verbose, once, no colour codes in files --------------

LOG_SCRIPT = """
import logging, sys
from dataspace.cli import main
main([*sys.argv[1:], "keys", "show", "/nonexistent/x.key"])  # any command: the root group runs
import flwr.supercore.logger as fl  # Flower's logger and its colouring handler, as in `train`
logging.basicConfig(format="%(levelname)s:%(message)s")  # what `import opacus` does
fl.log(logging.INFO, "flower-info-line")
gx = logging.getLogger("great_expectations.data_context.types.base")
gx.setLevel(logging.INFO)  # as Great Expectations sets it
gx.info("gx-info-line")
fl.log(logging.ERROR, "flower-error-line")
"""


def _logs(tmp_path: Path, *flags: str) -> str:
    err = tmp_path / f"err{len(flags)}.txt"
    with err.open("w") as f:  # a file, not a terminal
        subprocess.run(
            [sys.executable, "-c", LOG_SCRIPT, *flags],
            stdout=subprocess.DEVNULL,
            stderr=f,
            cwd=REPO,
            check=True,
            timeout=120,
            env={**os.environ, "FLWR_LOG_LEVEL": ""},
        )
    return err.read_text()


def test_library_logs_are_silent_unless_verbose_and_never_coloured(tmp_path: Path) -> None:
    quiet = _logs(tmp_path)
    assert "flower-info-line" not in quiet and "gx-info-line" not in quiet
    assert quiet.count("flower-error-line") == 1
    assert "\x1b[" not in quiet
    loud = _logs(tmp_path, "--verbose")
    assert loud.count("flower-info-line") == 1, loud
    assert loud.count("gx-info-line") == 1 and loud.count("flower-error-line") == 1
    assert "\x1b[" not in loud


def test_verbose_is_a_global_flag() -> None:
    r = run("--help")
    assert r.exit_code == 0 and "--verbose" in r.stdout


# --- 4. --help and argument errors are fast -----------------------------------------------

HEAVY = ("torch", "flwr", "opacus", "great_expectations", "duckdb", "matplotlib", "pyarrow")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["train", "--rounds", "x"], ["contract", "request", "--help"], ["audit", "-h"]],
)
def test_help_and_argument_errors_are_fast_and_light(args: list[str]) -> None:
    exe = Path(sys.executable).parent / "dataspace"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dataspace"]
    t0 = time.perf_counter()
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    seconds = time.perf_counter() - t0
    assert p.returncode in (0, 2), p.stderr
    assert seconds < 2.0, f"`dataspace {' '.join(args)}` took {seconds:.2f} s"
    code = (
        "import sys\nfrom dataspace.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.stdout.strip().splitlines()[-1] == "HEAVY:", p.stdout


# --- 5 and 6: the quality summary names what cost points; refusals list what is allowed ---


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site with the real SO-101 recording enrolled (no quality check yet)."""
    root = tmp_path_factory.mktemp("readable") / "site"
    r = run("connector", "init", root, "--org", "acme")
    assert r.exit_code == 0, r.output
    r = run("connector", "enroll", root, SO101, "--no-quality", "--json")
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.slow
def test_quality_summary_names_the_checks_that_cost_points(enrolled: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(enrolled, site)
    did = json.loads(run("connector", "list", site, "--json").stdout)["datasets"][0]["dataset_id"]
    r = run("quality", "check", site, did)
    assert r.exit_code == 0, r.output
    out = r.stdout
    # SO-101 ships no licence and no videos: both cost points, and say so
    assert "points lost" in out
    assert "FAIL license_stated" in out and "FAIL attachments" in out
    assert "license_stated (accessibility -33.3): no licence stated" in out
    assert f"dataspace connector licence {site} {did} SPDX-ID" in out
    assert "0 of 2 referenced files present; absent: videos/" in out
    assert f"dataspace connector attachments {site} {did} --refresh" in out
    js = json.loads(run("quality", "check", site, did, "--json").stdout)
    assert {s["check"] for s in js["shortfalls"]} >= {"license_stated", "attachments"}
    assert sum(s["points"] for s in js["shortfalls"]) == pytest.approx(100 - js["score"], abs=0.2)

    # the holder states the licence: the check (re-run at once) counts it
    r = run("connector", "licence", site, did, "CC-BY-4.0", "--json")
    assert r.exit_code == 0, r.output
    lic = json.loads(r.stdout)
    assert lic["license"] == "CC-BY-4.0" and lic["quality"] > js["score"]
    assert run("connector", "show", site, did, "--json").stdout.count('"CC-BY-4.0"') == 2
    assert main(["connector", "licence", str(site), did, "not a licence!"]) == 2

    # the videos turn up: --refresh finds them and the check counts them
    src = tmp_path / "so101"
    shutil.copytree(SO101, src)
    for a in json.loads(run("connector", "show", site, did, "--json").stdout)["attachments"]:
        (src / a["path"]).parent.mkdir(parents=True, exist_ok=True)
        (src / a["path"]).write_bytes(b"not really a video")
    r = run("connector", "attachments", site, did, "--refresh", "--source", src, "--json")
    assert r.exit_code == 0, r.output
    att = json.loads(r.stdout)
    assert att["present"] == att["referenced"] == 2 and att["quality"] > lic["quality"]
    out = run("quality", "check", site, did).stdout
    assert "ok   license_stated" in out and "ok   attachments" in out
    lost = out.split("points lost")[1] if "points lost" in out else ""
    assert "license_stated" not in lost and "attachments" not in lost


@pytest.mark.slow
def test_enroll_licence_option(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert run("connector", "init", site, "--org", "acme").exit_code == 0
    r = run("connector", "enroll", site, SO101, "--no-quality", "--licence", "Apache-2.0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["license"] == "Apache-2.0"
    listed = json.loads(run("connector", "list", site, "--json").stdout)["datasets"]
    assert listed[0]["license"] == "Apache-2.0"


@pytest.mark.slow
def test_refused_template_lists_the_allowed_ones(enrolled: Path, tmp_path: Path, capsys) -> None:
    site = tmp_path / "site"
    shutil.copytree(enrolled, site)
    key = tmp_path / "alice.key"
    assert run("keys", "new", key, "--name", "alice", "--role", "consumer").exit_code == 0
    did = json.loads(run("connector", "list", site, "--json").stdout)["datasets"][0]["dataset_id"]
    r = run(
        "connector", "policy", site, did, "--epsilon", "4", "--delta", "1e-5",
        "--templates", "bc-mlp", "--purpose", "research",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ask = ["contract", "request", site, "--dataset", did, "--key", key, "--purpose", "research"]
    ask += ["--epsilon", "1", "--rounds", "1", "--until", "2030-01-01"]
    code, _, err = run_main(capsys, *ask, "--template", "mlp")
    assert code == 3
    assert "model template 'mlp' is not permitted (allowed: bc-mlp)" in err
    assert "isAnyOf )" not in err
    code, _, err = run_main(capsys, *ask, "--template", "bc-mlp", "--purpose", "marketing")
    assert code == 3 and "purpose 'marketing' is not permitted (allowed: research)" in err
    # the older spelling of the site still works
    old = ["contract", "request", "--site", site, *ask[3:], "--template", "bc-mlp", "--json"]
    code, out, err = run_main(capsys, *old)
    assert code == 0, err
    cid = json.loads(out)["contract_id"]
    assert run("contract", "show", "--site", site, cid, "--json").exit_code == 0
    assert cid in run("contract", "list", site).stdout
    assert cid in run("contract", "list", "--site", site).stdout


def test_refusal_text_for_one_or_no_allowed_value() -> None:
    from dataspace.policy.evaluate import _failure
    from dataspace.policy.odrl import Constraint

    req = SimpleNamespace(terms=SimpleNamespace(template="mlp", purpose="ads"))
    one = Constraint("modelTemplate", "isAnyOf", ("bc-mlp",))
    assert _failure(one, req, None).endswith("(allowed: bc-mlp)")
    none = Constraint("modelTemplate", "isAnyOf", ())
    assert _failure(none, req, None).endswith("(allowed: none)")
    eq = Constraint("purpose", "eq", "research")
    assert _failure(eq, req, None) == "purpose 'ads' is not permitted (allowed: research)"


# --- 7. help shows real template names ------------------------------------------------------


def test_help_names_real_templates() -> None:
    from dataspace.federated.templates import REGISTRY
    from dataspace.policy.odrl import ACTIONS as ODRL_ACTIONS
    from dataspace.site.identity import ROLES as IDENTITY_ROLES

    assert set(TEMPLATE_NAMES) == set(REGISTRY)
    assert tuple(ACTIONS) == tuple(ODRL_ACTIONS) and tuple(ROLES) == tuple(IDENTITY_ROLES)
    for args in (["contract", "request", "--help"], ["train", "--help"]):
        text = "".join(run(*args).stdout.split())  # click may break a line at a hyphen
        assert "e.g.mlp" not in text
        assert "bc-mlp" in text and "bc-chunk" in text, text
    policy = "".join(run("connector", "policy", "--help").stdout.split())
    assert "(bc-mlp,bc-chunk)" in policy


# --- 8. one way to name a site ---------------------------------------------------------------


def test_site_is_positional_everywhere_and_site_flag_still_works(tmp_path: Path) -> None:
    site = tmp_path / "s"
    assert run("connector", "init", "--site", site, "--org", "acme").exit_code == 0
    assert run("connector", "list", site).stdout == run("connector", "list", "--site", site).stdout
    assert run("connector", "list", f"--site={site}").exit_code == 0
    assert run("contract", "list", site).stdout.strip() == "no contracts"
    assert run("contract", "list", "--site", site).stdout.strip() == "no contracts"
    bad = run("contract", "list", "--site")
    assert bad.exit_code == 2 and "--site needs a value" in bad.output
    rot = run("keys", "rotate", site)  # a site folder: the site's key
    assert rot.exit_code == 0, rot.output
    assert json.loads(rot.stdout)["old_key"]
    assert run("keys", "rotate", "--site", site).exit_code == 0
    for args in (
        ["connector", "enroll"],
        ["contract", "approve"],
        ["contract", "request"],
        ["quality", "check"],
        ["privacy-audit"],
        ["train"],
    ):
        text = " ".join(run(*args, "--help").stdout.split())
        assert "SITE" in text and "still accepted" in text, (args, text)


def test_move_to_front() -> None:
    assert _move_to_front(["--site", "S", "ID", "--json"], ["--site"]) == ["S", "ID", "--json"]
    assert _move_to_front(["ID", "--site=S"], ["--site"]) == ["S", "ID"]
    sim = ["--contract", "c", "--simulate", "a", "--simulate", "b", "--rounds", "1"]
    assert _move_to_front(sim, ["--simulate"]) == ["a", "b", "--contract", "c", "--rounds", "1"]
    assert _move_to_front(["--", "--site", "x"], ["--site"]) == ["--", "--site", "x"]
