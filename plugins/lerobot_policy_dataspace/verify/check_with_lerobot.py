"""Load dataspace exports with the real LeRobot and compare its actions with dataspace's.

Run where LeRobot and this plugin are installed (not in the project's environment:
LeRobot pins torch below the project's)::

    python3 -m venv /tmp/lerobot-env
    /tmp/lerobot-env/bin/pip install lerobot==0.4.4
    /tmp/lerobot-env/bin/pip install -e plugins/lerobot_policy_dataspace
    /tmp/lerobot-env/bin/python plugins/lerobot_policy_dataspace/verify/check_with_lerobot.py OUT

``OUT`` is what ``make_exports.py`` wrote. For each case, as LeRobot's own scripts do
(``lerobot-record --policy.path=...``): discover the plugin
(``register_third_party_plugins``), ``PreTrainedConfig.from_pretrained``,
``get_policy_class(cfg.type).from_pretrained``, ``make_pre_post_processors(cfg,
pretrained_path=...)``, then ``predict_action`` step by step; the actions must equal
dataspace's to 1e-5. Then LeRobot saves the loaded policy and pipelines again, and
every file must be what the export holds (same names, same JSON, same tensors; a
newer LeRobot may add fields of its own at their null defaults).
Last, the policy trains in LeRobot's shape of batch (``forward`` on
``observation.state`` [B, n_obs_steps, S] and ``action`` [B, chunk_size, A]).
``--golden DIR`` also keeps LeRobot's own files of the ``bc-chunk`` case there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import lerobot
import numpy as np
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins
from safetensors.torch import load_file

try:  # LeRobot 0.4
    from lerobot.utils.control_utils import predict_action
except ImportError:  # LeRobot 0.5 and later
    from lerobot.common.control_utils import predict_action

TOLERANCE = 1e-5


def lerobot_actions(export: Path, episodes: list[dict]) -> tuple[list[np.ndarray], object]:
    cfg = PreTrainedConfig.from_pretrained(export)
    policy = get_policy_class(cfg.type).from_pretrained(export)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(export))
    out = []
    for ep in episodes:
        policy.reset()
        acts = []
        for s in ep["states"]:
            obs = {"observation.state": np.asarray(s, dtype=np.float32)}
            a = predict_action(obs, policy, torch.device("cpu"), pre, post, use_amp=False)
            acts.append(a.squeeze(0).numpy())
        out.append(np.stack(acts))
    return out, (cfg, policy, pre, post)


def json_differences(name: str, mine: dict, lerobots: dict) -> list[str]:
    """Top-level keys that differ; a key LeRobot adds with a null value (a field newer
    than LeRobot 0.4.4, at its default, e.g. 0.6's ``pretrained_revision``) is noted
    on stdout but is no difference."""
    added = sorted(k for k in lerobots.keys() - mine.keys() if lerobots[k] is None)
    if added:
        print(f"  {name}: LeRobot {lerobot.__version__} adds defaults {added}")
    keys = (mine.keys() | lerobots.keys()) - set(added)
    return [f"{name}: {k} differs" for k in sorted(keys) if mine.get(k) != lerobots.get(k)]


def resaved_differences(export: Path, loaded: tuple, keep: Path | None) -> list[str]:
    """Files LeRobot writes for the loaded policy that differ from the export's."""
    _, policy, pre, post = loaded
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp)
        policy.save_pretrained(again)
        pre.save_pretrained(again)
        post.save_pretrained(again)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(again, keep)
        ours = sorted(p.name for p in export.iterdir())
        theirs = sorted(p.name for p in again.iterdir())
        if ours != theirs:
            return [f"files: export {ours} vs LeRobot {theirs}"]
        diffs = []
        for name in ours:
            if name.endswith(".json"):
                mine, lerobots = (json.loads((d / name).read_text()) for d in (export, again))
                diffs += json_differences(name, mine, lerobots)
            else:
                a, b = load_file(str(export / name)), load_file(str(again / name))
                if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
                    diffs.append(f"{name}: tensors differ")
        return diffs


def trains(policy: torch.nn.Module) -> bool:
    """One loss and backward pass on a batch shaped as LeRobot's dataset delivers it."""
    cfg = policy.config
    s = cfg.input_features["observation.state"].shape[0]
    a = cfg.output_features["action"].shape[0]
    batch = {
        "observation.state": torch.randn(3, cfg.n_obs_steps, s),
        "action": torch.randn(3, cfg.chunk_size, a),
        "action_is_pad": torch.zeros(3, cfg.chunk_size, dtype=torch.bool),
    }
    policy.train()
    loss, _ = policy.forward(batch)
    loss.backward()
    grads = [p.grad for p in policy.parameters()]
    return bool(torch.isfinite(loss)) and all(g is not None for g in grads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--golden", type=Path, help="keep LeRobot's own files of bc-chunk here")
    args = ap.parse_args()
    register_third_party_plugins()
    print(f"lerobot {lerobot.__version__}, torch {torch.__version__}")
    failed = False
    for case in sorted(p for p in args.out.iterdir() if (p / "expected.json").is_file()):
        expected = json.loads((case / "expected.json").read_text())
        got, loaded = lerobot_actions(case / "lerobot", expected["episodes"])
        worst = max(
            float(np.abs(g - np.asarray(ep["actions"], dtype=np.float32)).max())
            for g, ep in zip(got, expected["episodes"], strict=True)
        )
        keep = args.golden if args.golden and case.name == "bc-chunk" else None
        diffs = resaved_differences(case / "lerobot", loaded, keep)
        steps = sum(len(ep["states"]) for ep in expected["episodes"])
        learns = trains(loaded[1])
        ok = worst <= TOLERANCE and not diffs and learns
        failed |= not ok
        print(
            f"{case.name}: type {loaded[0].type}, {type(loaded[1]).__name__}, "
            f"template {expected['template']}, {steps} steps, max |action diff| {worst:.3g}, "
            f"re-saved by LeRobot: {'identical' if not diffs else '; '.join(diffs)}, "
            f"forward/backward: {'ok' if learns else 'FAILED'} "
            f"-> {'OK' if ok else 'FAIL'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
