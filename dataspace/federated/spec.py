"""A run's specification: what to train, on which contracts, how long; one value that the
engines run and the ServerApp reads back from Flower's run config (keys in parentheses)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import ConfigRecord

from dataspace.federated import dp, public_stats
from dataspace.federated.normalize import Stats

#: the training recipe's defaults (bench/RESULTS.md, "closed loop")
RECIPE_DEFAULTS: dict[str, Any] = {"optimizer": "adam", "lr-schedule": "cosine", "warmup": 0.05}


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@dataclass(kw_only=True)
class RunSpec:
    """A run's configuration (Flower run config keys in parentheses).

    ``None`` in ``min_nodes``, ``expected_nodes``, ``fold_evaluate`` and ``pack_arrays``
    is the engine's choice (:meth:`completed`): every site, and one message per site per
    round on the deployment engine.
    """

    contracts: list[str]  # contracts (comma-separated)
    template: str = "bc-mlp"  # template
    rounds: int = 3  # num-rounds
    out_dir: str  # out-dir
    run_id: str = field(default_factory=new_run_id)  # run-id
    seed: int = 0  # seed
    #: the training recipe (:class:`.dp.Recipe`; post-processing of the sites' DP releases,
    #: so the run's choice): DP-Adam, peak learning rate (None: the optimizer's default,
    #: :data:`.dp.DEFAULT_LR`), cosine schedule over the run's local steps with a warm-up
    optimizer: str = RECIPE_DEFAULTS["optimizer"]  # optimizer
    lr: float | None = None  # lr
    lr_schedule: str = RECIPE_DEFAULTS["lr-schedule"]  # lr-schedule
    warmup: float = RECIPE_DEFAULTS["warmup"]  # warmup (fraction of the run's local steps)
    #: the sites' local epochs: 0 says nothing (each site trains its own site.toml
    #: max_epochs); a number is checked by every site, which refuses a mismatch
    local_epochs: int = 0  # local-epochs
    min_nodes: int | None = None  # min-nodes
    expected_nodes: int | None = None  # expected-nodes (wait for these before round 0)
    round_timeout: float = 300.0  # round-timeout
    connect_timeout: float = 120.0  # connect-timeout
    #: evaluate round r's global model inside round r+1's train message (one message per
    #: site per round; the last round gets its own evaluate message)
    fold_evaluate: bool | None = None  # fold-evaluate
    #: SecAgg+ (:mod:`.secagg`): the server sees only the weighted sum of the updates
    secagg: bool = False  # secagg
    secagg_clipping_range: float = 8.0  # secagg-clipping-range (updates are clipped to it)
    secagg_max_weight: float = 0.0  # secagg-max-weight (0: 1.5 x the largest DP count)
    #: send the model as one flat tensor (:mod:`.packing`; not with SecAgg+)
    pack_arrays: bool | None = None  # pack-arrays
    #: the consumer's public normalisation statistics (:mod:`.public_stats`; lists
    #: ``state_mean`` ... ``action_std``, or a :class:`Stats`); None: the sites release
    #: DP statistics. Checked when the spec is made (:class:`.public_stats.PublicStatsError`).
    public_stats: dict[str, list[float]] | None = None  # public-stats (a JSON object)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.contracts = list(self.contracts)
        self.out_dir = str(self.out_dir)
        dp.check_recipe(self.optimizer, self.lr_schedule, self.warmup)
        if self.lr is None:
            self.lr = dp.DEFAULT_LR[self.optimizer]
        if self.public_stats is not None:
            given: Stats | Mapping[str, Sequence[float]] = self.public_stats
            self.public_stats = public_stats.to_lists(public_stats.check_stats(given))

    @property
    def stats_source(self) -> str:
        return "dp" if self.public_stats is None else "public"

    def public(self) -> Stats | None:
        """The public statistics, checked (finite, paired lengths, scales > 0)."""
        if self.public_stats is None:
            return None
        return public_stats.check_stats(self.public_stats, where="the run's public-stats")

    def completed(self, n_sites: int, fold_evaluate: bool, pack_arrays: bool) -> RunSpec:
        """This spec with the engine's choices filled in where it left them open."""
        return replace(
            self,
            min_nodes=n_sites if self.min_nodes is None else self.min_nodes,
            expected_nodes=n_sites if self.expected_nodes is None else self.expected_nodes,
            fold_evaluate=fold_evaluate if self.fold_evaluate is None else self.fold_evaluate,
            pack_arrays=pack_arrays if self.pack_arrays is None else self.pack_arrays,
        )

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> RunSpec:
        return cls(
            run_id=str(c["run-id"]),
            contracts=[x for x in str(c["contracts"]).split(",") if x],
            template=str(c.get("template", "bc-mlp")),
            rounds=int(c.get("num-rounds", 3)),
            out_dir=str(c["out-dir"]),
            seed=int(c.get("seed", 0)),
            # run_config() leaves out the recipe's keys at their defaults (below)
            optimizer=str(c.get("optimizer", RECIPE_DEFAULTS["optimizer"])),
            lr=float(c["lr"]) if c.get("lr") is not None else None,
            lr_schedule=str(c.get("lr-schedule", RECIPE_DEFAULTS["lr-schedule"])),
            warmup=float(c.get("warmup", RECIPE_DEFAULTS["warmup"])),
            local_epochs=int(c.get("local-epochs", 0)),
            min_nodes=int(c.get("min-nodes", 1)),
            expected_nodes=int(c.get("expected-nodes", 0)),
            round_timeout=float(c.get("round-timeout", 300.0)),
            connect_timeout=float(c.get("connect-timeout", 120.0)),
            fold_evaluate=bool(c.get("fold-evaluate", False)),
            secagg=bool(c.get("secagg", False)),
            secagg_clipping_range=float(c.get("secagg-clipping-range", 8.0)),
            secagg_max_weight=float(c.get("secagg-max-weight", 0.0)),
            pack_arrays=bool(c.get("pack-arrays", False)),
            public_stats=_public_from_config(c.get("public-stats", "")),
        )

    def run_config(self) -> dict[str, Any]:
        """The Flower run config that :meth:`from_config` reads back (a completed spec)."""
        cfg: dict[str, Any] = {
            "run-id": self.run_id,
            "contracts": ",".join(self.contracts),
            "template": self.template,
            "num-rounds": self.rounds,
            "out-dir": self.out_dir,
            "seed": self.seed,
            "lr": self.lr,
            "min-nodes": self.min_nodes or 1,
            "expected-nodes": self.expected_nodes or 0,
            "round-timeout": self.round_timeout,
            "connect-timeout": self.connect_timeout,
            "fold-evaluate": bool(self.fold_evaluate),
            "secagg": self.secagg,
            "secagg-clipping-range": self.secagg_clipping_range,
            "secagg-max-weight": self.secagg_max_weight,
            "pack-arrays": bool(self.pack_arrays),
        }
        if self.local_epochs:
            cfg["local-epochs"] = self.local_epochs
        # the recipe, always (the deployment engine's app config, :mod:`.deploy`, declares
        # these keys: Flower refuses a run config naming an undeclared one)
        cfg.update(
            {"optimizer": self.optimizer, "lr-schedule": self.lr_schedule, "warmup": self.warmup}
        )
        if self.public_stats is not None:
            cfg["public-stats"] = json.dumps(self.public_stats, separators=(",", ":"))
        return cfg

    def config(self, server_round: int) -> ConfigRecord:
        """What each message to a site carries (the site checks every value)."""
        public = self.public()
        extra = public_stats.to_config(public) if public is not None else {}
        return ConfigRecord(
            {
                **extra,
                "run-id": self.run_id,
                "contracts": ",".join(self.contracts),
                "template": self.template,
                "num-rounds": self.rounds,
                "server-round": server_round,
                "seed": self.seed,
                "optimizer": self.optimizer,
                "lr": self.lr,
                "lr-schedule": self.lr_schedule,
                "warmup": self.warmup,
                **({"local-epochs": self.local_epochs} if self.local_epochs else {}),
            }
        )


def _public_from_config(value: Any) -> dict[str, list[float]] | None:
    """Run config ``public-stats``: a JSON object (a string: run configs hold no lists)."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise public_stats.PublicStatsError(f"run config public-stats: not JSON ({e})") from e
    return public_stats.to_lists(public_stats.check_stats(value, where="run config public-stats"))
