"""Assurance: evidence a data holder can rerun (issue 8).

* :mod:`.privacy_audit` / :mod:`.mia`: an empirical privacy audit of the DP
  training (canaries, a membership-inference attack, an epsilon lower bound):
  :func:`audit_site`;
* the egress guard (what a connector sends per round, checked and recorded) is a
  Flower mod beside the ClientApp it wraps: :mod:`dataspace.federated.egress`;
* :mod:`.canary`: canary values planted in raw data, searched for in captured bytes.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.assurance.privacy_audit import AuditConfig, AuditResult, audit_site

__all__ = [
    "AuditConfig",
    "AuditResult",
    "audit_site",
]

# heavy (pyarrow, DuckDB, ...): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "audit_site": "dataspace.assurance.privacy_audit",
        "AuditConfig": "dataspace.assurance.privacy_audit",
        "AuditResult": "dataspace.assurance.privacy_audit",
    },
)
