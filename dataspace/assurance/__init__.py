"""Assurance: evidence a data holder can rerun (issue 8).

* :mod:`.privacy_audit` / :mod:`.mia`: an empirical privacy audit of the DP
  training (canaries, a membership-inference attack, an epsilon lower bound);
* the egress guard (what a connector sends per round, checked and recorded) is a
  Flower mod beside the ClientApp it wraps: :mod:`dataspace.federated.egress`;
* :mod:`.canary`: canary values planted in raw data, searched for in captured bytes.
"""
