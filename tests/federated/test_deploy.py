"""The deployment engine: SuperLink + SuperNodes as processes, TLS, node auth, FAB trust."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.federated import DeploymentEngine, RunSpec, train
from dataspace.federated.deploy import write_app
from dataspace.federated.fab import (
    build_fab,
    openssh_public,
    sign_fab,
    verify_fab,
    write_trusted_entities,
)


def test_fab_signature_in_flower_format(tmp_path):
    fab = build_fab(write_app(tmp_path / "app"))
    holder = Ed25519PrivateKey.generate()
    trusted = {"holder-0": openssh_public(holder)}
    sig = sign_fab(fab, holder, "holder-0")
    assert verify_fab(fab, [sig], trusted)
    altered = fab[:-1] + bytes([fab[-1] ^ 1])
    assert not verify_fab(altered, [sig], trusted)  # altered bundle
    assert not verify_fab(fab, [], trusted)  # unsigned bundle
    stranger = sign_fab(fab, Ed25519PrivateKey.generate(), "holder-0")
    assert not verify_fab(fab, [stranger], trusted)  # signed by a key the holder never accepted


@pytest.mark.slow
def test_three_supernodes_tls_auth_real_data_and_untrusted_fab_refused(federation, tmp_path):
    fed = federation(epsilon=4.0, rounds=1)
    trust = write_trusted_entities(
        tmp_path / "trusted.yaml", {"holder-0": openssh_public(Ed25519PrivateKey.generate())}
    )
    # a 4th SuperNode names its trusted keys: it must refuse the (unsigned) bundle
    h = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "run",
            seed=3,
            min_nodes=3,
        ),
        [s.root for s in fed.sites],
        DeploymentEngine(timeout=480, guarded_sites=[fed.sites[0].root], guard_trust=trust),
    )
    assert h["status"] == "finished", h.get("error")
    assert len(h["rounds"]) == 1 and len(h["rounds"][0]["sites"]) == 3
    assert set(h["rounds"][0]["epsilon"]) == set(fed.dataset_ids)
    refusals = [f["reason"] for f in h["stats"]["failed"]]
    assert len(refusals) == 1 and "FAB could not be verified" in refusals[0], refusals
    assert (tmp_path / "run" / "final.npz").exists()


def test_workers_run_only_their_own_apps(tmp_path):
    """A bundle naming other code is refused before anything of it runs (the holder's guard)."""
    from dataspace.federated.fab import UntrustedBundleError
    from dataspace.federated.hub_worker import OWN_SERVERAPPS
    from dataspace.federated.site_worker import check_bundle

    own = write_app(tmp_path / "own")
    assert check_bundle(build_fab(own)) == "dataspace.federated.site_worker:app"
    foreign = write_app(tmp_path / "foreign")
    toml = foreign / "pyproject.toml"
    toml.write_text(toml.read_text().replace("dataspace.federated.site_worker:app", "evil:app"))
    with pytest.raises(UntrustedBundleError, match="'evil:app' is not our own code"):
        check_bundle(build_fab(foreign))
    with pytest.raises(UntrustedBundleError, match="cannot be read"):
        check_bundle(b"PK not a bundle")
    from dataspace.federated.fab import bundle_component

    assert bundle_component(build_fab(own), "serverapp", OWN_SERVERAPPS)
    with pytest.raises(UntrustedBundleError, match="serverapp"):
        bundle_component(build_fab(own), "serverapp", frozenset({"other:app"}))


def test_a_declined_heartbeat_never_signals_the_warm_worker():
    """Flower's task heartbeat raises SIGINT in its process when the server declines a
    beat (the task already ended): in a warm worker serving every task, a run refused at
    once stopped the hub worker for all later runs. Ours only ends the beats."""
    import signal
    import time
    from types import SimpleNamespace

    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http

    from dataspace.federated.superexec import TaskHeartbeat

    class Ended:  # a Runtime API for which the task is over
        calls = 0

        def SendTaskHeartbeat(self, req):  # Flower's name
            self.calls += 1
            return SimpleNamespace(success=False)

    signals: list[int] = []
    old = signal.signal(signal.SIGINT, lambda n, _f: signals.append(n))
    try:
        client = Ended()
        ours = TaskHeartbeat(client).start()
        time.sleep(0.5)
        ours.stop()
        assert client.calls == 1 and signals == []
        flower = HeartbeatSender(make_task_heartbeat_fn_http(Ended()))  # what we replaced
        flower.start()
        deadline = time.monotonic() + 5
        while not signals and time.monotonic() < deadline:
            time.sleep(0.05)
        flower.stop()
        assert signals == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)
