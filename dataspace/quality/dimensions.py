"""Quality dimension scores, 0 to 100, after GB/T 36344-2018 and ISO/IEC 25012.

GB/T 36344-2018 (信息技术 数据质量评价指标) names six dimensions; each is scored
here from the checks that feed it, with its nearest ISO/IEC 25012:2008
inherent / system-dependent characteristic:

===============  ==========  ========================  ====================================
dimension        GB/T name   ISO/IEC 25012             checks that feed it
===============  ==========  ========================  ====================================
conformity       规范性      Compliance                schema, dtypes, frame_index
completeness     完整性      Completeness              nonfinite (nulls, NaN, inf), missing_task,
                                                       attachments (referenced files present)
accuracy         准确性      Accuracy                  out_of_range, frozen_joint, action_jump,
                                                       action_noise
consistency      一致性      Consistency               timestamps_increasing, episode_length,
                                                       duplicate, near_duplicate, row_count
timeliness       时效性      Currentness               frame_interval (jitter, dropped frames
                                                       against the declared fps)
accessibility    可访问性    Accessibility             frames readable, licence stated,
                                                       joint names given
===============  ==========  ========================  ====================================

Score of a check: an episode-level check scores ``100 * (1 - flagged / episodes)``
(the share of episodes that pass); a dataset-level check (schema, dtypes,
row count, not null) scores 100 if it passes, else 0; a facet of accessibility
or attachments scores the share of its items present.
Score of a dimension: the mean of its checks' scores (a dimension with no
check that could run is ``None`` and left out of the overall score).
Overall score: the mean of the available dimension scores, each weighted
equally (GB/T 36344 gives no weights; equal weights keep the number explainable),
rounded to one decimal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DIMENSIONS: dict[str, dict[str, str]] = {
    "conformity": {"gbt": "规范性", "iso25012": "Compliance"},
    "completeness": {"gbt": "完整性", "iso25012": "Completeness"},
    "accuracy": {"gbt": "准确性", "iso25012": "Accuracy"},
    "consistency": {"gbt": "一致性", "iso25012": "Consistency"},
    "timeliness": {"gbt": "时效性", "iso25012": "Currentness"},
    "accessibility": {"gbt": "可访问性", "iso25012": "Accessibility"},
}


@dataclass
class DimensionScore:
    name: str
    gbt: str
    iso25012: str
    score: float | None
    checks: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gbt_36344": self.gbt,
            "iso_25012": self.iso25012,
            "score": self.score,
            "checks": self.checks,
        }


@dataclass(frozen=True)
class CheckScore:
    """One input to the dimension scores: a check, its dimension and its 0..100 score."""

    check: str
    dimension: str
    score: float


def episode_check_score(flagged: int, episodes: int) -> float:
    """Share of episodes that pass, in percent (an empty dataset passes vacuously)."""
    if episodes <= 0:
        return 100.0
    return 100.0 * (1.0 - min(flagged, episodes) / episodes)


def accessibility_scores(
    frames_readable: bool,
    license: str | None,
    state_names: Sequence[str],
    action_names: Sequence[str],
) -> list[CheckScore]:
    """Accessibility facets: can the data be read, used (licence) and understood (names)."""
    generic = all(n.isdigit() for n in [*state_names, *action_names])
    return [
        CheckScore("frames_readable", "accessibility", 100.0 if frames_readable else 0.0),
        CheckScore("license_stated", "accessibility", 100.0 if license else 0.0),
        CheckScore(
            "joint_names",
            "accessibility",
            0.0 if generic and (state_names or action_names) else 100.0,
        ),
    ]


def attachments_score(attachments: Sequence[Mapping[str, Any]]) -> list[CheckScore]:
    """Share of referenced files (e.g. videos) that are present (completeness)."""
    if not attachments:
        return []
    present = sum(1 for a in attachments if a.get("present"))
    return [CheckScore("attachments", "completeness", 100.0 * present / len(attachments))]


def score_dimensions(scores: Sequence[CheckScore]) -> tuple[list[DimensionScore], float | None]:
    """Dimension scores and the overall score (module docstring gives the formulas)."""
    dims = []
    for name, names in DIMENSIONS.items():
        mine = {s.check: round(s.score, 2) for s in scores if s.dimension == name}
        value = round(sum(mine.values()) / len(mine), 1) if mine else None
        dims.append(DimensionScore(name, names["gbt"], names["iso25012"], value, mine))
    available = [d.score for d in dims if d.score is not None]
    overall = round(sum(available) / len(available), 1) if available else None
    return dims, overall


# --- what cost points, and how to win them back (the summary of `dataspace quality check`) ---

#: per dataset-level facet: what it measures (its detail when it costs points)
FACETS: dict[str, str] = {
    "attachments": "files the source references (e.g. videos) that are present",
    "license_stated": "a licence is stated",
    "joint_names": "state and action joints have names, not only numbers",
    "frames_readable": "the stored frames can be read",
}

#: how a holder wins back the points a check costs; SITE DATASET are the command's own
FIXES: dict[str, str] = {
    "license_stated": "state it: dataspace connector licence SITE DATASET SPDX-ID "
    "(e.g. CC-BY-4.0), or enroll with --licence",
    "attachments": "put the missing files in the folder enrolled from (or give another with "
    "--source), then: dataspace connector attachments SITE DATASET --refresh",
    "joint_names": "name the joints in the source's metadata (LeRobot: meta/info.json "
    "features.*.names) before enrolling it",
    "frames_readable": "the dataset's folder under SITE/store/datasets/ is missing or empty: "
    "restore it from a backup",
}
#: for a failed expectation (episode or frames suite)
FIX_EPISODES = (
    "list them: dataspace quality flags SITE DATASET (a recording fixed at the source "
    "enrolls as a new dataset); a check that does not fit this robot: --exclude {check}"
)
FIX_FRAMES = "the stored frames disagree with their metadata ({check}): enroll the source again"


@dataclass(frozen=True)
class Shortfall:
    """A check that scored under 100: the points it costs, why, and how to fix it."""

    check: str
    dimension: str
    score: float
    #: points of its dimension's score it costs (100 - score, shared by the dimension's checks)
    dimension_points: float
    #: points of the overall score it costs
    points: float
    detail: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "dimension": self.dimension,
            "score": self.score,
            "dimension_points": self.dimension_points,
            "points": self.points,
            "detail": self.detail,
            "fix": self.fix,
        }


def shortfalls(
    dims: Sequence[DimensionScore],
    details: Mapping[str, str] | None = None,
    episode_checks: Sequence[str] = (),
) -> list[Shortfall]:
    """Every check under 100, the largest cost first (``details``: check -> what was found).

    A check's cost follows the scoring (module docstring): ``100 - score`` over
    the number of checks in its dimension, then over the number of dimensions.
    """
    details = details or {}
    n_dims = sum(1 for d in dims if d.score is not None)
    out = []
    for d in dims:
        if d.score is None or not d.checks:
            continue
        for check, score in d.checks.items():
            if score >= 100.0:
                continue
            dim_points = (100.0 - score) / len(d.checks)
            if check in FIXES:
                fix = FIXES[check]
            elif check in episode_checks:
                fix = FIX_EPISODES.format(check=check)
            else:
                fix = FIX_FRAMES.format(check=check)
            detail = details.get(check) or FACETS.get(check, check)
            out.append(
                Shortfall(
                    check=check,
                    dimension=d.name,
                    score=round(score, 1),
                    dimension_points=round(dim_points, 1),
                    points=round(dim_points / max(n_dims, 1), 1),
                    detail=detail,
                    fix=fix,
                )
            )
    return sorted(out, key=lambda s: (-s.points, s.dimension, s.check))
