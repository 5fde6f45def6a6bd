"""Publishing a dataset's usage policy at a site (``connector policy``).

Publishing checks the policy against the dataset it names (id, fingerprint),
the site's own key (the assigner), and what the dataset has already committed
(a new budget may not promise less than is reserved or spent: live contracts
must never promise more than the budget). It then stores the document, sets
the dataset's budget, and logs ``policy.published``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dataspace.errors import NotFoundError
from dataspace.policy import outbox, store
from dataspace.policy.odrl import PolicyError, UsagePolicy, parse_usage_policy
from dataspace.site import log as events

if TYPE_CHECKING:
    from dataspace.site.folder import Site


@dataclass(frozen=True)
class PublishedPolicy:
    policy: UsagePolicy
    policy_sha256: str
    published_at: datetime
    log_index: int | None


def publish_policy(
    site: Site,
    policy: UsagePolicy | dict[str, Any] | str | bytes,
    now: datetime | None = None,
    dataset_id: str | None = None,
) -> PublishedPolicy:
    """Set the usage policy of the dataset ``policy`` targets; logs policy.published.

    A policy that is malformed, outside the profile, for another dataset or
    fingerprint, or promising less than is committed raises :class:`PolicyError`
    (or NotFoundError for an unknown dataset), changes nothing, and is logged as
    ``access.refused``. With ``dataset_id`` (an id or name), the policy must target
    that dataset.
    """
    now = now or datetime.now(UTC)
    outbox.flush(site)
    try:
        return _publish(site, policy, now, dataset_id)
    except (PolicyError, NotFoundError) as e:
        dataset_id = policy.dataset_id if isinstance(policy, UsagePolicy) else None
        if dataset_id is None and isinstance(policy, dict):
            target = policy.get("target")
            uid = target.get("uid") if isinstance(target, dict) else None
            dataset_id = uid.rsplit(":", 1)[-1] if isinstance(uid, str) else None
        events.refused(site, str(e), time=now, operation="policy.publish", dataset_id=dataset_id)
        raise


def _publish(
    site: Site,
    policy: UsagePolicy | dict[str, Any] | str | bytes,
    now: datetime,
    expected: str | None,
) -> PublishedPolicy:
    if not isinstance(policy, UsagePolicy):
        policy = parse_usage_policy(policy)
    holder = site.identity.key_b64
    if policy.assigner is not None and policy.assigner != holder:
        raise PolicyError(
            f"$.assigner: the policy is assigned by {policy.assigner}, but this site's key "
            f"is {holder}; a site publishes only its own policies"
        )
    sha = policy.sha256()
    with store.LOCK, site.db() as con:
        store.ensure_tables(con)
        ds = store.dataset_ref(con, policy.dataset_id)
        if expected is not None and store.dataset_ref(con, expected).dataset_id != ds.dataset_id:
            raise PolicyError(
                f"$.target.uid: the policy is for dataset {policy.dataset_id}, not {expected}"
            )
        if ds.dataset_id != policy.dataset_id:
            raise PolicyError(
                f"$.target.uid: name the dataset by its id {ds.dataset_id}, "
                f"not {policy.dataset_id!r}"
            )
        if ds.fingerprint != policy.fingerprint:
            raise PolicyError(
                f"$.target.fingerprint: dataset {ds.dataset_id} has fingerprint "
                f"{ds.fingerprint}, the policy names {policy.fingerprint}"
            )
        store.expire_contracts(con, now)
        used = store.committed(con, ds.dataset_id, now)
        if policy.budget_epsilon < used.usage.epsilon or policy.budget_delta < used.usage.delta:
            raise PolicyError(
                f"dataset {ds.dataset_id} already has epsilon {used.usage.epsilon:g} and delta "
                f"{used.usage.delta:g} reserved or spent; a policy with budget "
                f"({policy.budget_epsilon:g}, {policy.budget_delta:g}) would promise less"
            )
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?)",
            [
                sha,
                policy.dataset_id,
                policy.fingerprint,
                policy.uid,
                json.dumps(policy.to_jsonld()),
                store.to_db(now),
            ],
        )
        con.execute(
            "INSERT OR REPLACE INTO budgets VALUES (?, ?, ?, ?, ?, ?)",
            [
                policy.dataset_id,
                policy.fingerprint,
                policy.budget_epsilon,
                policy.budget_delta,
                sha,
                store.to_db(now),
            ],
        )
        oid = outbox.stage(
            con,
            "policy.published",
            dataset_id=policy.dataset_id,
            fingerprint=policy.fingerprint,
            epsilon=policy.budget_epsilon,
            delta=policy.budget_delta,
            policy_sha256=sha,
            purposes=sorted(_purposes(policy)),
            policy=policy.to_jsonld(),
            policy_uid=policy.uid,
            manual_approval=policy.manual_approval,
            time=now,
        )
        con.execute("COMMIT")
    index = outbox.publish(site, oid)
    return PublishedPolicy(policy, sha, now, index)


def current_policy(site: Site, dataset_id: str) -> UsagePolicy:
    """The policy in force for a dataset (by id or name); NotFoundError if none."""
    with site.db() as con:
        store.ensure_tables(con)
        ds = store.dataset_ref(con, dataset_id)
        row = store.current_policy_row(con, ds.dataset_id)
    if row is None:
        raise NotFoundError(f"dataset {ds.dataset_id} has no usage policy")
    return parse_usage_policy(row[1])


def _purposes(policy: UsagePolicy) -> set[str]:
    """Every purpose some permission names (empty: the policy does not restrict purpose)."""
    out: set[str] = set()
    for rule in policy.permissions:
        for c in rule.get("purpose"):
            out.update((c.right,) if isinstance(c.right, str) else c.right)  # type: ignore[arg-type]
    return out
