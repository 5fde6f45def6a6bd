"""Per-dataset contribution to a federated run: GTG-Shapley over the rounds' updates.

Method: Guided Truncation Gradient Shapley (Liu et al., "GTG-Shapley: Efficient
and Accurate Participant Contribution Evaluation in Federated Learning", ACM
TIST 2022). The server already holds, for each round r, the global model
theta_r and every site's update u_{r,i} (``OUT/rounds/NNN/updates``). The
utility of a coalition S in round r is the drop in the consumer's validation
loss, measured from the previous global model, when only S's updates are
aggregated (FedAvg weights renormalised over S)::

    v_r(S) = loss(theta_r) - loss(theta_r + sum_{i in S} w_i u_{r,i} / sum_{i in S} w_i)

and a site's contribution is the sum over rounds of its Shapley value of v_r.
The validation set is the consumer's own episodes (never given to any site),
so the utility costs no privacy budget; the updates are the DP-noised ones the
sites released anyway.

Why this and not the alternatives the issue allows (measured with
bench/value_detect.py's federation, 4 sites of real Unitree G1 episodes, one
with actions shuffled across frames, ``stats_bound`` 2; 14 runs of 8 rounds
with 8 or 20 episodes per site, each scored all three ways; bench/RESULTS.md):

* leave-one-out or Monte Carlo Shapley by *retraining* cost 2^n or many extra
  DP runs (extra privacy budget at every site): ruled out;
* the same values on models *reconstructed over the whole run* (coalition model
  = initial model + the coalition's averaged updates of every round, "MR" in
  Song et al. 2019) ranked the shuffled site last in 0 of 14 runs, and so did
  leave-one-out on those reconstructions: a small coalition's reconstruction
  sums un-averaged DP noise over all rounds and drifts away from the models the
  updates were computed at, so its loss measures noise, not data;
* per round (this method) each coalition model stays one step from the model
  the updates were computed at: the shuffled site was last in 14 of 14 runs and
  in every round of every run (and in 10 of 10 seeds of the 5-round bench).
  Unlike leave-one-out it also splits credit fairly between sites with
  redundant data.

No method can see more than the policy learned: with DP normalisation
statistics whose scales are far too large (a fixed ``site.toml [training]
stats_bound`` far above the data's range), the policy learns only the mean
action, which shuffled actions teach as well as any, and the shuffled site is
not last (bench/RESULTS.md). By default each site now picks that bound itself
with DP (:func:`dataspace.federated.normalize.dp_bound`).

Exactness and truncation: with n <= 8 sites every coalition is evaluated
(2^n losses per round, exact); beyond that, permutations are sampled with GTG's
within-round truncation (stop a permutation once the remaining marginal gain
is below ``tol`` of the round's total) and between-round truncation (skip a
round whose total utility is below ``tol`` of the first round's).

What the number means: the reduction of the consumer's validation loss (MSE in
the run's normalised action units) that the site's data brought, summed over
rounds and averaged over the orders in which sites could have joined. Positive
helped, negative hurt (e.g. mislabelled or shuffled actions: an update fitted
to actions that do not follow the states pulls the policy back towards the mean
action). The suggested revenue split gives each site its positive part's share;
a site with a negative contribution gets 0.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataspace.errors import DataspaceError, NotFoundError
from dataspace.federated.normalize import normalised
from dataspace.federated.templates import get_template
from dataspace.quality.value import quality_adjusted, report_usable_share
from dataspace.schema import Episode


class ContributionError(DataspaceError):
    """A run whose contributions cannot be computed (e.g. no per-site updates were kept)."""


EXACT_MAX_SITES = 8
#: files written into a run directory (``dataspace.federated.report`` reads the first)
CONTRIBUTION = "contribution.json"
VALUE = "value.json"
METHOD = "GTG-Shapley over rounds, utility = consumer's validation MSE from the previous model"


def _aggregate(
    theta: np.ndarray,
    updates: Mapping[Hashable, np.ndarray],
    weights: Mapping[Hashable, float],
    coalition: Sequence[Hashable],
) -> np.ndarray:
    if not coalition:
        return theta
    total = sum(float(weights[i]) for i in coalition)
    step = sum(float(weights[i]) / total * np.asarray(updates[i]) for i in coalition)
    return theta + step


def _weights_for(
    weights: Mapping[Hashable, float] | Sequence[Mapping[Hashable, float]] | None,
    r: int,
    sites: Sequence[Hashable],
) -> dict[Hashable, float]:
    if weights is None:
        return dict.fromkeys(sites, 1.0)
    w = weights[r] if isinstance(weights, Sequence) else weights
    return {s: float(w.get(s, 1.0)) for s in sites}


def round_shapley(
    theta: np.ndarray,
    updates: Mapping[Hashable, np.ndarray],
    weights: Mapping[Hashable, float],
    eval_loss: Callable[[np.ndarray], float],
    *,
    permutations: int = 50,
    tol: float = 0.01,
    rng: np.random.Generator | None = None,
) -> dict[Hashable, float]:
    """Shapley values of one round's utility v_r (module docstring)."""
    sites = list(updates)
    n = len(sites)
    base = float(eval_loss(theta))
    cache: dict[frozenset, float] = {frozenset(): 0.0}

    def v(coal: Sequence[Hashable]) -> float:
        key = frozenset(coal)
        if key not in cache:
            cache[key] = base - float(
                eval_loss(_aggregate(theta, updates, weights, sorted(coal, key=sites.index)))
            )
        return cache[key]

    phi = dict.fromkeys(sites, 0.0)
    if n == 0:
        return phi
    if n <= EXACT_MAX_SITES:
        for i in sites:
            others = [s for s in sites if s != i]
            for k in range(n):
                wk = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                for coal in itertools.combinations(others, k):
                    phi[i] += wk * (v([*coal, i]) - v(list(coal)))
        return phi
    rng = rng or np.random.default_rng(0)
    total = v(sites)
    for _ in range(permutations):
        order = list(rng.permutation(n))
        prev = 0.0
        for pos, idx in enumerate(order):
            coal = [sites[j] for j in order[: pos + 1]]
            if abs(total - prev) < tol * abs(total):
                break  # within-round truncation: the rest adds ~nothing
            cur = v(coal)
            phi[sites[idx]] += (cur - prev) / permutations
            prev = cur
    return phi


def contributions(
    round_updates: list[dict[Hashable, np.ndarray]],
    weights: Mapping[Hashable, float] | Sequence[Mapping[Hashable, float]] | None,
    global_init: np.ndarray,
    eval_loss: Callable[[np.ndarray], float],
    *,
    tol: float = 0.01,
    permutations: int = 50,
    seed: int = 0,
    per_round: list[dict[Hashable, float]] | None = None,
) -> dict[Hashable, float]:
    """GTG-Shapley contribution of each site over a run, in validation-loss units.

    ``round_updates[r][site]`` is the flat update (new - old parameters) a site
    sent in round r; ``weights`` the FedAvg weights (one mapping, or one per
    round; None = equal); ``global_init`` the flat global model before round 0.
    The global model is advanced each round by the full FedAvg aggregate, as
    the server did. Rounds whose total utility is below ``tol`` times the first
    round's are skipped (between-round truncation). If ``per_round`` is a list,
    each round's Shapley values are appended to it (zeros for a skipped round).
    """
    rng = np.random.default_rng(seed)
    theta = np.asarray(global_init, dtype=float).copy()
    sites: list[Hashable] = []
    for ups in round_updates:
        for s in ups:
            if s not in sites:
                sites.append(s)
    total = dict.fromkeys(sites, 0.0)
    first_gain: float | None = None
    for r, ups in enumerate(round_updates):
        present = list(ups)
        w = _weights_for(weights, r, present)
        nxt = _aggregate(theta, ups, w, present)
        gain = float(eval_loss(theta)) - float(eval_loss(nxt))
        if first_gain is None:
            first_gain = gain
        if first_gain and abs(gain) < tol * abs(first_gain) and r > 0:
            if per_round is not None:
                per_round.append(dict.fromkeys(present, 0.0))
            theta = nxt
            continue
        phi = round_shapley(theta, ups, w, eval_loss, permutations=permutations, tol=tol, rng=rng)
        for s, x in phi.items():
            total[s] += x
        if per_round is not None:
            per_round.append(phi)
        theta = nxt
    return total


#: one sentence for reports (what a contribution number means)
MEANING = (
    "contribution = how much lower the consumer's validation MSE (normalised action units) is "
    "thanks to the dataset: its Shapley share of each round's loss decrease, summed over rounds; "
    "negative = the dataset's updates made the policy worse (e.g. actions that do not follow "
    "the states); suggested split = shares of the positive contributions"
)


def revenue_split(contrib: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Suggested shares (sum 1): proportional to positive contributions; equal if none."""
    pos = {s: max(0.0, float(c)) for s, c in contrib.items()}
    total = sum(pos.values())
    if total <= 0:
        n = len(contrib)
        return {s: 1.0 / n for s in contrib} if n else {}
    return {s: p / total for s, p in pos.items()}


# -- a run directory (dataspace.federated.server_app's layout) -----------------------------


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def _flat(arrays: Mapping[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k]).reshape(-1).astype(np.float64) for k in keys])


class Validation:
    """MSE of a flat parameter vector on the consumer's own episodes.

    In the run's normalised units (the policy's DP statistics, which travel in
    the parameter vector's buffers), with the template's own training pairs,
    i.e. exactly the loss the sites minimise, on data no site holds.
    """

    def __init__(self, template: str, arrays: Mapping[str, np.ndarray], episodes: list[Episode]):
        if not episodes:
            raise NotFoundError("contribution: no validation episodes given")
        self.keys = sorted(arrays)
        self.shapes = {k: np.asarray(arrays[k]).shape for k in self.keys}
        s_dim, a_dim = episodes[0].state.shape[1], episodes[0].action.shape[1]
        want = (len(arrays.get("state_mean", ())), len(arrays.get("action_mean", ())))
        if want != (s_dim, a_dim):
            raise ContributionError(
                f"validation episodes have state/action dims {s_dim}/{a_dim}, "
                f"the run's model {want[0]}/{want[1]}"
            )
        self.template = get_template(template)
        self.policy = self.template.build(s_dim, a_dim)
        self.state = torch.from_numpy(np.concatenate([e.state for e in episodes]))
        self.action = torch.from_numpy(np.concatenate([e.action for e in episodes]))
        self.episode = torch.from_numpy(
            np.concatenate([np.full(e.frames, i) for i, e in enumerate(episodes)])
        )

    def unflat(self, theta: np.ndarray) -> dict[str, Any]:
        out, i = {}, 0
        for k in self.keys:
            n = int(np.prod(self.shapes[k]))
            out[k] = torch.from_numpy(theta[i : i + n].reshape(self.shapes[k]).astype(np.float32))
            i += n
        return out

    def loss(self, theta: np.ndarray) -> float:
        with torch.no_grad():
            self.policy.load_state_dict(self.unflat(theta))
            xs, ys = normalised(self.policy, self.state, self.action)
            x, y = self.template.pairs(xs, ys, self.episode)
            return float(torch.mean((self.policy(x) - y) ** 2))


@dataclass
class RunUpdates:
    """What the server kept of a run: per round, each dataset's update and FedAvg weight."""

    keys: list[str]
    initial: dict[str, np.ndarray]  # global model before round 1 (round 000)
    updates: list[dict[str, np.ndarray]]  # [round][dataset_id] = flat update
    weights: list[dict[str, float]]  # [round][dataset_id] = num_examples
    final: np.ndarray  # flat global model after the last completed round


def read_run(out_dir: Path | str) -> RunUpdates:
    """The completed rounds of the run in ``out_dir`` (``OUT/rounds/NNN/...``).

    A site's update is its reply minus the global model it started from (the
    previous round's ``global.npz``).
    """
    out = Path(out_dir)
    g0_path = out / "rounds" / "000" / "global.npz"
    if not g0_path.exists():
        raise NotFoundError(f"{g0_path}: not a run directory (no round-0 global model)")
    g0 = _load(g0_path)
    keys = sorted(g0)
    rounds = sorted(p for p in (out / "rounds").iterdir() if (p / "round.json").exists())
    prev = _flat(g0, keys)
    updates, weights = [], []
    for rdir in rounds:
        rec = json.loads((rdir / "round.json").read_text())
        ups = {
            f.stem: _flat(_load(f), keys) - prev for f in sorted((rdir / "updates").glob("*.npz"))
        }
        missing = sorted({s["dataset-id"] for s in rec["sites"]} - set(ups))
        if missing:
            # a SecAgg+ run keeps only the sum: there is nothing to attribute
            raise ContributionError(
                f"{rdir}: no update kept for {', '.join(missing)} (a secure-aggregation run "
                "keeps only the sum of the updates); per-dataset contributions need them"
            )
        updates.append(ups)
        weights.append({s["dataset-id"]: float(s["num_examples"]) for s in rec["sites"]})
        prev = _flat(_load(rdir / "global.npz"), keys)
    return RunUpdates(keys, g0, updates, weights, prev)


#: how the value report combines contribution and quality (dataspace.quality.value)
QUALITY_MEANING = (
    "quality_adjusted = usable_share x max(contribution, 0) + min(contribution, 0) "
    "- (1 - usable_share) x the run's mean |contribution| (usable_share: the share of the "
    "dataset's motion in episodes its signed quality report does not flag; flagged data is "
    "charged as a typical dataset's effect); quality_adjusted_split = shares of its positive parts"
)


def run_contributions(
    out_dir: Path | str,
    template: str,
    episodes: list[Episode],
    permutations: int = 20,
    quality: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Contribution per dataset of the run in ``out_dir``; writes ``contribution.json``.

    ``episodes`` are the consumer's validation episodes. Writes
    ``OUT/contribution.json`` ({dataset: value}, plotted and reported by
    :func:`dataspace.federated.report.write_report`) and ``OUT/value.json``;
    returns ``{"contribution", "split", "validation_mse": {"initial", "final"},
    "per_round", "method", "meaning"}``. With ``quality`` ({dataset_id: its
    publishable quality report}) the value also holds ``usable_share``,
    ``quality_adjusted`` and ``quality_adjusted_split`` (QUALITY_MEANING).
    """
    out = Path(out_dir)
    run = read_run(out)
    val = Validation(template, run.initial, episodes)
    init = _flat(run.initial, run.keys)
    per_round: list[dict[str, float]] = []
    threads = torch.get_num_threads()
    # 2^n small-MLP evaluations per round: one thread is fastest, more thrash on a shared CPU
    torch.set_num_threads(1)
    try:
        contrib = contributions(
            run.updates,
            run.weights,
            init,
            val.loss,
            permutations=permutations,
            seed=0,
            per_round=per_round,
        )
        mse = {"initial": val.loss(init), "final": val.loss(run.final)}
    finally:
        torch.set_num_threads(threads)
    contrib = {str(k): float(v) for k, v in contrib.items()}
    result = {
        "contribution": contrib,
        "split": {str(k): float(v) for k, v in revenue_split(contrib).items()},
        "validation_mse": mse,
        "per_round": [{str(k): float(v) for k, v in r.items()} for r in per_round],
        "validation_frames": int(sum(e.frames for e in episodes)),
        "method": METHOD,
        "meaning": MEANING,
    }
    if quality is not None:
        usable = {d: report_usable_share(quality[d]) for d in contrib if d in quality}
        adjusted = quality_adjusted(contrib, usable)
        result["usable_share"] = usable
        result["quality_adjusted"] = adjusted
        split = revenue_split(adjusted)
        result["quality_adjusted_split"] = {str(k): float(v) for k, v in split.items()}
        result["quality_meaning"] = QUALITY_MEANING
    (out / CONTRIBUTION).write_text(json.dumps(contrib, indent=2, sort_keys=True))
    (out / VALUE).write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def contribution_for_run(
    out_dir: Path | str,
    validation: list[Episode],
    quality: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """:func:`run_contributions` for a run directory, its template read from ``history.json``.

    ``validation`` is the consumer's own episodes (the CLI reads them with
    :func:`dataspace.connectors.detect.read_episodes`, in any enrollable format).
    """
    out = Path(out_dir)
    hist = out / "history.json"
    if not hist.exists():
        raise NotFoundError(f"{hist}: not a run directory (no history.json)")
    template = json.loads(hist.read_text())["spec"]["template"]
    return run_contributions(out, template, validation, quality=quality)
