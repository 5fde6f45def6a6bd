"""Empirical privacy audit benchmark (issue 8): DP at epsilon 8 against no DP.

    .venv/bin/python bench/privacy_audit.py [--canaries 500] [--seed 0]

Enrolls the real SO-101 recording (1,492 frames) into a temporary site, then
runs the one-run audit (:mod:`dataspace.assurance.privacy_audit`) twice with
the same canaries and the same loss attack:

* DP: the ClientApp's DP-SGD at epsilon 8, delta 1e-5, 5 rounds x 4 epochs;
* no DP: the same template, wider (512x512), trained with Adam for 100 epochs
  on 256 real frames (small data, many epochs, larger model: how an
  unprotected model overfits).

Last stdout line: JSON with ``dp_accountant_epsilon``, ``dp_empirical_epsilon``,
``dp_auc``, ``nodp_auc``, ``nodp_empirical_epsilon`` and ``ratio`` (empirical
over accountant epsilon under DP; must stay below 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dataspace.assurance.privacy_audit import AuditConfig, audit_site
from dataspace.connectors.enroll import enroll
from dataspace.site import create_site

SO101 = Path(__file__).resolve().parents[1].parent / "shared/data/so101-record-test-lerobot-v3"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--canaries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=SO101)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        site = create_site(Path(tmp) / "site", org="audit")
        ds = enroll(site, args.data).dataset_id
        print(f"enrolled {ds} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        dp_cfg = AuditConfig(epsilon=8.0, canaries=args.canaries, seed=args.seed)
        dp_res = audit_site(site, ds, dp_cfg)
        print(f"DP: {dp_res.to_json()}", file=sys.stderr)
        nodp_cfg = AuditConfig(
            epsilon=None, canaries=args.canaries, seed=args.seed, hidden=(512, 512),
            max_frames=256, epochs=20, rounds=5,
        )  # fmt: skip
        nodp_res = audit_site(site, ds, nodp_cfg)
        print(f"no DP: {nodp_res.to_json()}", file=sys.stderr)
    acc = float(dp_res.accountant_epsilon or 0.0)
    out = {
        "dp_accountant_epsilon": round(acc, 4),
        "dp_empirical_epsilon": round(dp_res.empirical_epsilon, 4),
        "dp_auc": round(dp_res.auc, 4),
        "nodp_auc": round(nodp_res.auc, 4),
        "nodp_empirical_epsilon": round(nodp_res.empirical_epsilon, 4),
        "canaries": args.canaries,
        "confidence": dp_res.confidence,
        "dp_noise_multiplier": dp_res.noise_multiplier,
        "ratio": round(dp_res.empirical_epsilon / acc, 4) if acc else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
