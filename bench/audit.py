"""Benchmark of the audit log (issue 3): 1,000,000 signed events, appended durably in
batches, then audited end to end.

    .venv/bin/python bench/audit.py [--n 1000000] [--batch 1000] [--rounds-per-contract 100]

Setup (not timed): sign N events with a pool of 2 processes and write them to a
temporary JSONL file: 10 ``policy.published`` (one per dataset, a large budget), one
``contract.agreed`` per contract (epsilon 8, delta 1e-5, ``--rounds-per-contract``
rounds), then ``round.started`` events as a site's ledger writes them today
(``dataspace.policy.ledger.charge_round``): release "round", the accountant's
``releases`` (a DP-SGD round and the two Gaussian losses, one of 3 mechanism profiles
per dataset), the readable ``mechanism``, ``noise`` "csprng", ``secure_aggregation``
false, and the charge the accountant gives: ``epsilon`` = epsilon(the contract's
releases so far with these) - epsilon(without them) at the contract's delta, and
``contract_epsilon`` the former, composed one curve at a time with
``accountant.compose_onto`` / ``epsilon_at`` as the auditor does (rule round-mechanism).
Rounds are dealt to the contracts in turn (entry i to contract i mod C, its round
i // C + 1), so every contract is live over the whole log. Every contract of a profile
releases the same mechanisms, so its k-th charge is the profile's: one running curve
per profile gives every contract's charges (checked against ``accountant.epsilon`` of
the whole history on a sample). Each event is RFC 8785 canonical and Ed25519-signed,
byte for byte what ``make_event`` writes (checked on a sample).

Timed:
* ``appends_per_s``: stream the file in batches into a fresh ``TransparencyLog``
  (``append_many``: fsync of entries, of hashes, of the index, then a newly
  signed checkpoint written with temp + fsync + rename + directory fsync per batch).
* ``verify_per_s``: ``dataspace.audit.verify.audit`` over the whole log in ONE
  process: every entry parsed, checked canonical and signature-verified, the
  Merkle root recomputed and compared with the signed checkpoint, and the
  contract/budget rules run. ``ratio`` = verify_per_s / the raw Ed25519 verify
  rate of one core measured in this run (cryptography's ``verify`` on the same
  messages, keys pre-parsed), sampled in bursts of 1,000 between every 20,000
  entries of the audit (their time is excluded from the audit's) so that both see
  the same machine load. Both rates are per CPU second of this process (``time.process_time``)
  because other work shares the machine's 2 cores and swings wall-clock rates;
  the wall-clock rates and their ratio are printed too (``*_wall*``).
* ``max_proof_hashes``: the longest inclusion proof over 2,000 indices (and the
  edges) at size N, against ceil(log2 N); each proof is verified.
* ``peak_rss_mb``: peak resident memory of this process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing as mp
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataspace import accountant
from dataspace.audit import merkle
from dataspace.audit.events import make_event, signed_message, verify_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import Verifier, raw_public
from dataspace.audit.source import FolderSource
from dataspace.audit.verify import TrustedKeys, audit

ORIGIN = "bench-site.example/log"
FP = "5e" * 32
DATASETS = 10
CONSUMER = "robotco"
TEMPLATE = "mlp"
#: every contract: (epsilon, delta), epsilon raised to a whole number above what its
#: rounds spend when --rounds-per-contract needs more; its rounds are --rounds-per-contract
CONTRACT_EPSILON = 8.0
DELTA = 1e-5
#: each dataset's budget (policy.published): a dataset's contracts together spend
#: about 5 each, ~5,000 a dataset at N = 1M
DATASET_EPSILON = 1e6
#: per dataset (d % 3): a site's privacy plan (dataspace.federated.dp.PrivacyPlan.mechanism()
#: and what client_app adds), its round's releases being plan.round_release()
PROFILES = (
    {"units": 64_000, "batch_size": 640, "noise_multiplier": 1.2, "steps": 100},
    {"units": 25_600, "batch_size": 512, "noise_multiplier": 1.5, "steps": 50},
    {"units": 200_000, "batch_size": 1000, "noise_multiplier": 1.0, "steps": 200},
)
EVAL_NOISE = 40.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _time_of(i: int) -> str:
    """One event a second from 2026-11-01 (1M events fit in 12 days)."""
    day, sec = divmod(i, 86_400)
    return f"2026-11-{1 + day:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}Z"


def mechanism(p: int, rounds: int) -> dict:
    """Profile ``p``'s mechanism as round.started logs it (readable parameters)."""
    m = PROFILES[p]
    return {
        "privacy_unit": "frame",
        "units": m["units"],
        "noise_multiplier": m["noise_multiplier"],
        "sample_rate": m["batch_size"] / m["units"],
        "steps": m["steps"],
        "clip_norm": 1.0,
        "batch_size": m["batch_size"],
        "eval_noise": EVAL_NOISE,
        "stats_noise": 20.0,
        "stats_releases": 3,
        "rounds": rounds,
        "lr": 2.0,
        "stats": "dp",
    }


def releases(p: int) -> list[list]:
    """Profile ``p``'s round as the ledger logs it: ``[list(check_release(r)) ...]``."""
    m = PROFILES[p]
    rel = [(m["noise_multiplier"], m["batch_size"] / m["units"], m["steps"]), (EVAL_NOISE, 1.0, 2)]
    return [list(accountant.check_release(r)) for r in rel]


def charges(rounds: int) -> list[list[tuple[float, float]]]:
    """Per profile, the (epsilon, contract_epsilon) of a contract's rounds 1..``rounds``:
    one running curve, composed and converted as the auditor does (rule round-mechanism)."""
    out = []
    for p in range(len(PROFILES)):
        rel = releases(p)
        curve, before, rows = [0.0] * len(accountant.ORDERS), 0.0, []
        for _ in range(rounds):
            curve = accountant.compose_onto(curve, rel)
            after = accountant.epsilon_at(curve, DELTA)
            rows.append((after - before, after))
            before = after
        out.append(rows)
    return out


def round_fields(i: int, contracts: int, rounds: int, table) -> dict:
    """The details of round event ``i`` (0-based among the rounds), as charge_round logs them."""
    c, k = i % contracts, i // contracts + 1
    d = c % DATASETS
    p = d % len(PROFILES)
    eps, total = table[p][k - 1]
    return {
        "time": _time_of(i),
        "dataset_id": f"ds-{d}",
        "fingerprint": FP,
        "contract_id": f"c-{c}",
        "purpose": "research",
        "run_id": f"run-{c}",
        "round": k,
        "release": "round",
        "epsilon": eps,
        "contract_epsilon": total,
        "releases": releases(p),
        "mechanism": mechanism(p, rounds),
        "noise": "csprng",
        "secure_aggregation": False,
        "template": TEMPLATE,
        "consumer": CONSUMER,
        "privacy_unit": "frame",
    }


#: sentinels in the per-profile templates, filled per event: top-level keys, in RFC 8785
#: order (sorted), the order they appear in the text
_HOLES = ("contract_epsilon", "contract_id", "dataset_id", "epsilon", "round", "run_id", "time")


def templates(pub_b64: str, rounds: int) -> list[tuple[list[str], str]]:
    """Per profile, the RFC 8785 text of a round.started split at its per-event values,
    and the top-level key that follows ``sig`` (where the signature goes)."""
    out = []
    for p in range(len(PROFILES)):
        obj = round_fields(p, len(PROFILES), rounds, [[(0.5, 0.5)]] * len(PROFILES))
        obj |= {h: f"@@{h}@@" for h in _HOLES}
        obj |= {"v": 1, "kind": "round.started", "actor": {"name": ORIGIN, "key": pub_b64}}
        text = rfc8785.dumps(obj).decode()
        parts = []
        for h in _HOLES:
            head, text = text.split(f'"@@{h}@@"')
            parts.append(head)
        parts.append(text)
        keys = sorted([*obj, "sig"])  # ASCII keys: RFC 8785's UTF-16 order is this one
        out.append((parts, keys[keys.index("sig") + 1]))
    return out


_W: dict = {}


def _init_worker(pem: bytes, contracts: int, nums, tpl) -> None:
    # built in the parent: a failing initializer would make the pool start workers forever
    _W.update(key=serialization.load_pem_private_key(pem, None), contracts=contracts)
    _W.update(nums=nums, tpl=tpl)


def _canon(x: float) -> str:
    return rfc8785.dumps(x).decode()


def _fast_event(i: int) -> bytes:
    """The same bytes make_event produces (checked on a sample), without its pure-Python
    RFC 8785 pass: the profile's canonical text with this event's values put in."""
    contracts = _W["contracts"]
    c, k = i % contracts, i // contracts + 1
    d = c % DATASETS
    p = d % len(PROFILES)
    parts, after_sig = _W["tpl"][p]
    eps, total = _W["nums"][p][k - 1]
    vals = (total, f'"c-{c}"', f'"ds-{d}"', eps, str(k), f'"run-{c}"', f'"{_time_of(i)}"')
    msg = "".join(x for pair in zip(parts[:-1], vals, strict=True) for x in pair) + parts[-1]
    msg = msg.encode()
    sig = base64.b64encode(_W["key"].sign(msg)).decode()
    at = msg.rfind(f',"{after_sig}":'.encode())
    return msg[:at] + b',"sig":"' + sig.encode() + b'"' + msg[at:]


def _sign_chunk(span: tuple[int, int]) -> bytes:
    start, end = span
    return b"".join(_fast_event(i) + b"\n" for i in range(start, end))


def preamble(key: Ed25519PrivateKey, contracts: int, rounds: int, epsilon: float) -> list[bytes]:
    """The policies and contracts the rounds cite, so that the audit's rules all pass."""
    out = []
    for d in range(DATASETS):
        out.append(
            make_event(
                "policy.published",
                key,
                ORIGIN,
                dataset_id=f"ds-{d}",
                fingerprint=FP,
                time="2026-10-01T00:00:00Z",
                epsilon=DATASET_EPSILON,
                delta=DELTA,
            )
        )
    for c in range(contracts):
        out.append(
            make_event(
                "contract.agreed",
                key,
                ORIGIN,
                contract_id=f"c-{c}",
                dataset_id=f"ds-{c % DATASETS}",
                fingerprint=FP,
                purpose="research",
                time="2026-10-02T00:00:00Z",
                consumer=CONSUMER,
                template=TEMPLATE,
                epsilon=epsilon,
                delta=DELTA,
                rounds=rounds,
                until="2027-01-01T00:00:00Z",
            )
        )
    return out


def layout(n: int, rounds: int) -> tuple[int, int]:
    """(contracts, round events) for ``n`` events in all: as few contracts as hold the
    rounds at ``rounds`` each."""
    contracts = max(1, -(-(n - DATASETS) // (rounds + 1)))
    return contracts, n - DATASETS - contracts


def presign(path: Path, key: Ed25519PrivateKey, n: int, rounds: int, table, epsilon: float) -> int:
    """Write the N signed events; returns how many precede the rounds (the preamble)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    contracts, m = layout(n, rounds)
    head = preamble(key, contracts, rounds, epsilon)
    step = 20_000
    spans = [(a, min(m, a + step)) for a in range(0, m, step)]
    pub = base64.b64encode(raw_public(key)).decode()
    # the charges as RFC 8785 numbers, once per (profile, round)
    nums = [[(_canon(e), _canon(t)) for e, t in rows] for rows in table]
    init = (pem, contracts, nums, templates(pub, rounds))
    with open(path, "wb") as f, mp.Pool(2, _init_worker, init) as pool:
        f.write(b"".join(e + b"\n" for e in head))
        for k, blob in enumerate(pool.imap(_sign_chunk, spans), 1):
            f.write(blob)
            if k % 10 == 0:
                log(f"  signed {min(m, k * step):,}/{m:,}")
    return len(head)


def raw_verify_rate(path: Path, pub: bytes, skip: int, sample: int = 20_000) -> tuple[float, float]:
    """Raw Ed25519 verifications per second on one core (per wall second, per CPU second),
    over the round.started entries (after the ``skip`` entries of the preamble)."""
    pk = Ed25519PublicKey.from_public_bytes(pub)
    items = []
    with open(path, "rb") as f:
        for _ in range(skip):
            f.readline()
        for _, line in zip(range(sample), f, strict=False):
            e = line[:-1]
            sig_b64 = json.loads(e)["sig"]
            items.append((base64.b64decode(sig_b64), signed_message(e, sig_b64)))
    t, c = time.perf_counter(), time.process_time()
    for sig, msg in items:
        pk.verify(sig, msg)
    return len(items) / (time.perf_counter() - t), len(items) / (time.process_time() - c)


class RawProbe:
    """Measures raw Ed25519 verification in short bursts between slices of the audit."""

    def __init__(
        self, path: Path, pub: bytes, skip: int, every: int = 20_000, burst: int = 1000
    ) -> None:
        self.pk = Ed25519PublicKey.from_public_bytes(pub)
        self.items = []
        with open(path, "rb") as f:
            for _ in range(skip):
                f.readline()
            for _, line in zip(range(burst), f, strict=False):
                e = line[:-1]
                sig_b64 = json.loads(e)["sig"]
                self.items.append((base64.b64decode(sig_b64), signed_message(e, sig_b64)))
        self.every = every
        self.wall = self.cpu = 0.0
        self.count = 0

    def burst(self) -> None:
        t, c = time.perf_counter(), time.process_time()
        for sig, msg in self.items:
            self.pk.verify(sig, msg)
        self.wall += time.perf_counter() - t
        self.cpu += time.process_time() - c
        self.count += len(self.items)

    def interleave(self, entries):
        for i, e in enumerate(entries):
            if i % self.every == 0:
                self.burst()
            yield e
        self.burst()


def batches(path: Path, size: int):
    with open(path, "rb") as f:
        batch = []
        for line in f:
            batch.append(line[:-1])
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument(
        "--rounds-per-contract", type=int, default=100, help="each contract's rounds (100)"
    )
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    n, rounds = args.n, args.rounds_per_contract
    contracts, m = layout(n, rounds)
    assert m > 0, f"--n {n} leaves no room for rounds after {DATASETS + contracts} events"
    work = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    try:
        key = Ed25519PrivateKey.generate()
        pub = raw_public(key)
        pre = work / "presigned.jsonl"
        # the charges of a contract's rounds, per mechanism profile (see the docstring)
        table = charges(-(-m // contracts))
        most = max(rows[-1][1] for rows in table)
        contract_eps = max(CONTRACT_EPSILON, float(math.ceil(most)))
        per_dataset = [0.0] * DATASETS
        for c in range(contracts):  # what each dataset's contracts spend in all
            k = len(range(c, m, contracts))
            if k:
                per_dataset[c % DATASETS] += table[c % DATASETS % len(PROFILES)][k - 1][1]
        assert max(per_dataset) <= DATASET_EPSILON, per_dataset
        for p, rows in enumerate(table):  # the running curve is the accountant's epsilon
            for k in sorted({1, min(2, len(rows)), len(rows) // 2 or 1, len(rows)}):
                rel = releases(p)
                full = accountant.epsilon(rel * k, DELTA)
                assert math.isclose(rows[k - 1][1], full, rel_tol=1e-12), (p, k)
                charge = full - accountant.epsilon(rel * (k - 1), DELTA)
                assert math.isclose(rows[k - 1][0], charge, rel_tol=1e-9, abs_tol=1e-12)
        log(
            f"setup: signing {n:,} events with 2 processes -> {pre}: {contracts:,} contracts "
            f"(epsilon {contract_eps:g}, delta {DELTA:g}, up to {rounds} rounds; the most "
            f"spent {most:.3f}), {m:,} round.started"
        )
        t = time.perf_counter()
        head = presign(pre, key, n, rounds, table, contract_eps)
        log(f"setup: signed in {time.perf_counter() - t:.1f}s")
        # the shortcut writes exactly what make_event would, and it verifies
        sample = {0, 1, m - 1} | {random.randrange(m) for _ in range(50)}
        with open(pre, "rb") as f:
            for j, line in enumerate(f):
                if j - head in sample:
                    details = round_fields(j - head, contracts, rounds, table)
                    again = make_event("round.started", key, ORIGIN, **details)
                    assert again == line[:-1], (j, again, line)
                    assert verify_event(line[:-1]).get("epsilon") == details["epsilon"]

        raw_before = raw_verify_rate(pre, pub, head)
        log(f"raw Ed25519 verify (1 core): {raw_before[0]:,.0f}/s wall, {raw_before[1]:,.0f}/s CPU")

        tlog = TransparencyLog.create(work / "log", ORIGIN, key)
        log(f"append: {n:,} events in batches of {args.batch} (durable, checkpoint per batch)")
        t = time.perf_counter()
        done = 0
        for b in batches(pre, args.batch):
            tlog.append_many(b)
            done += len(b)
            if done % 100_000 == 0:
                log(f"  appended {done:,} ({done / (time.perf_counter() - t):,.0f}/s)")
        append_s = time.perf_counter() - t
        appends_per_s = n / append_s
        log(f"append: {appends_per_s:,.0f}/s ({append_s:.1f}s)")
        assert tlog.size == n

        sizes = sorted({1, 2, 3, n - 1, n} | {random.randrange(n) for _ in range(2000)})
        root = tlog.root()
        max_hashes = 0
        t = time.perf_counter()
        f = open(pre, "rb")  # noqa: SIM115
        first = f.readline()[:-1]
        f.close()
        for i in sizes:
            if i >= n:
                continue
            p = tlog.inclusion_proof(i, n)
            max_hashes = max(max_hashes, len(p))
            merkle.verify_inclusion(i, n, tlog.leaf_hash(i), p, root)
        merkle.verify_inclusion(0, n, merkle.leaf_hash(first), tlog.inclusion_proof(0, n), root)
        proof_s = (time.perf_counter() - t) / len(sizes)
        bound = math.ceil(math.log2(n))
        log(
            f"proofs: max {max_hashes} hashes (bound {bound}), "
            f"{proof_s * 1e6:.0f} us each with its verification"
        )

        log("verify: full audit in one process (signatures, canonical form, tree, rules)")
        src = FolderSource(work / "log")
        trusted = TrustedKeys(logs=[Verifier(ORIGIN, pub)])
        probe = RawProbe(pre, pub, head)
        t, c = time.perf_counter(), time.process_time()
        # as `dataspace audit verify --allow-unanchored` does without --json: every rule,
        # no per-round records. The bench measures speed: no witness cosigns its checkpoint
        # and no earlier checkpoint is kept, so the log is unanchored (rule `unanchored`),
        # accepted explicitly; anchoring costs a few signature checks, not per entry.
        report = audit(
            probe.interleave(src.iter_entries()),
            src.checkpoint(),
            trusted,
            keep_rounds=False,
            allow_unanchored=True,
        )
        verify_s = time.perf_counter() - t - probe.wall
        verify_cpu = time.process_time() - c - probe.cpu
        assert report.entries_checked == n, report.entries_checked
        assert report.ok, report.violations[:3]
        assert not report.anchored and not report.verified
        assert report.kinds["round.started"] == report.round_count == m
        assert report.kinds["contract.agreed"] == len(report.contracts) == contracts
        raw_after = raw_verify_rate(pre, pub, head)
        # Other processes share the 2 cores, so rates swing with their load: the raw rate is
        # sampled between slices of the audit itself (RawProbe) and those samples' time is
        # taken out of the audit's; the ratio compares CPU-time rates of this one process.
        raw_cpu = probe.count / probe.cpu
        raw_wall = probe.count / probe.wall
        verify_per_s = n / verify_cpu
        log(
            f"verify: {verify_per_s:,.0f}/s CPU, {n / verify_s:,.0f}/s wall ({verify_s:.1f}s); "
            f"raw after {raw_after[0]:,.0f}/s wall, {raw_after[1]:,.0f}/s CPU"
        )
        fsck_t = time.perf_counter()
        fsck_ok = tlog.fsck().ok
        fsck_s = time.perf_counter() - fsck_t
        log(f"fsck: {'clean' if fsck_ok else 'PROBLEMS'} in {fsck_s:.1f}s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "n": n,
            "batch": args.batch,
            "appends_per_s": round(appends_per_s),
            "verify_per_s": round(verify_per_s),
            "verify_wall_per_s": round(n / verify_s),
            "raw_ed25519_verify_per_s": round(raw_cpu),
            "raw_ed25519_verify_wall_per_s": round(raw_wall),
            "ratio": round(verify_per_s / raw_cpu, 3),
            "ratio_wall": round((n / verify_s) / raw_wall, 3),
            "max_proof_hashes": max_hashes,
            "proof_bound_ceil_log2_n": bound,
            "peak_rss_mb": round(peak, 1),
            "fsck_clean": fsck_ok,
            "fsck_s": round(fsck_s, 1),
            "log_bytes": sum(p.stat().st_size for p in (work / "log").iterdir()),
            "round_started": m,
            "contracts": contracts,
            "rounds_per_contract": rounds,
            "contract_epsilon": contract_eps,
            "max_contract_epsilon_spent": round(most, 6),
            "anchored": report.anchored,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
