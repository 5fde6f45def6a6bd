"""The hub's dashboard in headless Chromium, over the real data of a small demo run.

The demo runs with its services in this process (hub and connectors served by
uvicorn on 127.0.0.1, the same apps as ``dataspace serve``); then one dataset's
policy is switched to manual approval, a consumer asks for a contract (pending),
and the browser checks every view against the hub's and the sites' own state,
approves the pending contract and rejects another one with the buttons.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from dataspace.demo import DemoOptions, run_demo
    from dataspace.policy.odrl import build_policy
    from dataspace.policy.policies import publish_policy

    wd = tmp_path_factory.mktemp("dash")
    opts = DemoOptions(
        workdir=wd, sites=2, rounds=2, epsilon=4.0, simulate=True, services="threads",
        keep_services=True, episodes_per_site=3,
    )  # fmt: skip
    result = run_demo(opts)
    services = result.services
    services_sites = _sites(wd)
    os.environ["DATASPACE_DASHBOARD_HOLDER_KEYS"] = os.pathsep.join(
        str(s.key_path) for s in services_sites
    )
    try:
        # the first holder now approves each request by hand; a consumer asks twice
        site = services_sites[0]
        ds = result.sites[0]
        publish_policy(
            site,
            build_policy(
                dataset_id=ds.dataset_id,
                fingerprint=ds.fingerprint,
                assigner=site.identity.key_b64,
                epsilon=40.0,
                delta=1e-4,
                purposes=["robot-policy-training"],
                until=datetime.now(UTC) + timedelta(days=30),
                max_rounds=20,
                templates=["bc-mlp"],
                manual_approval=True,
            ),
        )
        from dataspace.connectors.client import request_via_connector
        from dataspace.site.identity import load_private_key

        key = load_private_key(wd / "consumer" / "consumer.key")
        url = services.connectors[site.name].url
        pending = [
            request_via_connector(
                url, key, dataset=ds.dataset_id, purpose="robot-policy-training",
                epsilon=1.0, rounds=1, until=datetime.now(UTC) + timedelta(days=7),
                template="bc-mlp",
            )["contract_id"]
            for _ in range(2)
        ]  # fmt: skip
        yield result, services, pending, services_sites
    finally:
        services.stop()
        os.environ.pop("DATASPACE_DASHBOARD_HOLDER_KEYS", None)


def _sites(wd: Path):
    from dataspace.site.folder import Site

    return [Site.open(p) for p in sorted((wd / "sites").iterdir())]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (./dev test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_every_view_shows_the_run(world, browser):
    result, services, pending, _ = world
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(services.dashboard_url)
    # catalog: every site's dataset with its quality score
    for s in result.sites:
        row = page.locator(f'tr[data-dataset="{s.dataset_id}"]')
        assert row.count() == 1
        assert str(round(s.quality)) in row.inner_text()
        assert str(s.episodes) in row.inner_text()
    # contracts: the demo's agreed contracts and the two pending requests
    for s in result.sites:
        row = page.locator(f'tr[data-contract="{s.contract_id}"]')
        assert "agreed" in row.inner_text() or "active" in row.inner_text()
    for cid in pending:
        assert "pending" in page.locator(f'tr[data-contract="{cid}"]').inner_text()
    # budget: spent per dataset equals what the run registered (the sites' ledgers agree)
    for s in result.sites:
        text = page.locator(f'tr[data-budget="{s.dataset_id}"]').inner_text()
        assert f"{s.epsilon_run:.2f}" in text, (text, s.epsilon_run)
    assert page.locator("#budget svg rect.spent").count() >= len(result.sites)
    # runs: the loss curve has one point per round, contributions per dataset
    run = page.locator(f'div[data-run="{result.run_id}"]')
    assert run.locator("svg circle").count() == len(result.rounds)
    for s in result.sites:
        assert s.dataset_id in run.inner_text()
    # audit log: size, checkpoint, verified
    size = int(page.locator("#log-size").inner_text())
    assert size > 0
    assert page.locator("#log-status").inner_text() == "verified"
    assert f"\n{size}\n" in page.locator("#checkpoint").inner_text()
    # witnesses: every connector cosigned the hub's log (the demo waited for them)
    names = sorted(s.site for s in result.sites)
    assert page.locator("#log-witnesses").inner_text() == ", ".join(names)
    # and the auditor saw them: the hub's log cosigned by the connectors, each site's by the
    # hub and the other connectors
    *site_audits, hub_audit = result.audit
    assert hub_audit["witnesses"] == names
    # (witnesses are named by their keys' names; a log's origin is its own, URL-style)
    hub_name = services.hub_info["name"]
    for s, a in zip(result.sites, site_audits, strict=True):
        assert a["witnesses"] == sorted({hub_name, *names} - {s.site}), a
    # and each site's rounds are the hub's run's (cross-check)
    assert all(a["cross_check"]["ok"] for a in site_audits), site_audits
    assert all(a["cross_check"]["rounds_matched"] == len(result.rounds) for a in site_audits)
    shot = Path("/tmp/dataspace-dashboard.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_holder_approves_and_rejects_in_the_browser(world, browser):
    from dataspace.policy.contracts import load_contract

    _, services, pending, sites = world
    page = browser.new_page()
    page.goto(services.dashboard_url)
    page.locator(f'button[data-id="{pending[0]}"][data-decision="approve"]').click()
    page.wait_for_selector(f'tr[data-contract="{pending[0]}"] .s-agreed', timeout=30_000)
    page.locator(f'button[data-id="{pending[1]}"][data-decision="reject"]').click()
    page.wait_for_selector(f'tr[data-contract="{pending[1]}"] .s-rejected', timeout=30_000)
    # the decision happened at the holder's connector, in its own store
    assert load_contract(sites[0], pending[0]).state == "agreed"
    assert load_contract(sites[0], pending[1]).state == "rejected"


def test_dashboard_refuses_remote_clients_and_cross_site_posts(world):
    _, services, pending, _ = world
    # a local process without the hub's token (a consumer on the same machine) sees nothing
    for path in ("/dashboard", "/dashboard/api/state"):
        r = httpx.get(services.hub_url + path, cookies={"dataspace_dashboard": "guess"})
        assert r.status_code == 401 and "token" in r.json()["error"]
    r = httpx.get(services.dashboard_url)
    assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
    cookies = {"dataspace_dashboard": services.dashboard_url.split("token=")[1]}
    r = httpx.post(
        services.hub_url + f"/dashboard/api/contracts/{pending[0]}/approve", cookies=cookies
    )
    assert r.status_code == 403  # no X-Dashboard header: a form on another site cannot do this
    r = httpx.get(services.hub_url + "/v1/catalog")
    assert r.status_code == 401  # the signed API is untouched by the dashboard
