"""The holders' budget reports at the hub: what each site's ledger says, as the site signed it.

A holder's connector sends, for each dataset it published, a ``budget.reported``
statement signed with the site's key (:mod:`dataspace.policy.budget_statement`).
:func:`accept_report` keeps it only when all of these hold:

1. it is signed by the key that sends it (the holder the request's signature names;
   a statement signed by anyone else, or malformed, is refused);
2. it states what a ledger can (finite, non-negative numbers; spent and reserved
   within the lifetime budget; remaining = budget - reserved - spent);
3. the dataset is in the catalog under that holder (no holder reports another's),
   with the fingerprint the catalog has;
4. it is not dated ahead of the hub's clock by more than :data:`FUTURE_S`;
5. it is newer than the report kept (a larger (site_log_size, time)); an older or
   equal one is ignored, not an error (a late delivery, or a replay).

The hub keeps the latest per (holder, dataset); ``GET /v1/budget`` serves them with
the signed text, and the dashboard's budget view shows nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dataspace.auth.service import Caller
from dataspace.errors import DataspaceError, RefusedError
from dataspace.hub.store import ConflictError, HubStore, now_iso
from dataspace.policy.budget_statement import read_budget_statement

#: how far ahead of the hub's clock a statement may be dated (the signature window's)
FUTURE_S = 300


class ForeignDatasetError(RefusedError):
    """A budget report on a dataset the sending holder has not published."""

    code = "not_your_dataset"


class FutureReportError(DataspaceError):
    """A budget report dated ahead of the hub's clock (it would hide every later one)."""

    code = "bad_time"


def accept_report(
    store: HubStore, caller: Caller, statement: str, now: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    """Check ``statement`` (module docstring) and keep it if newer.

    Returns (``"stored"`` | ``"unchanged"`` | ``"stale"``, the report kept now).
    """
    now = now or datetime.now(UTC)
    st = read_budget_statement(statement, caller.key_id)
    entry = store.catalog.get((caller.key_id, st.dataset_id))
    if entry is None:
        raise ForeignDatasetError(
            f"dataset {st.dataset_id!r} is not in the catalog under this holder: "
            "a holder reports only the budgets of datasets it published"
        )
    if entry.get("fingerprint") != st.fingerprint:
        raise ConflictError(
            f"the report on {st.dataset_id!r} is for fingerprint {st.fingerprint}; "
            f"the catalog entry has {entry.get('fingerprint')}"
        )
    if st.time > now + timedelta(seconds=FUTURE_S):
        raise FutureReportError(
            f"the report is dated {st.time.isoformat()}, more than {FUTURE_S} s after "
            f"the hub's clock ({now.isoformat(timespec='seconds')})"
        )
    record = st.to_json() | {"holder_name": caller.name or st.holder_name}
    record["received_at"] = now_iso()
    status = store.put_budget(record)
    return status, store.budgets[(caller.key_id, st.dataset_id)]
