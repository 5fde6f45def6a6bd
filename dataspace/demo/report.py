"""The demo's HTML report: one self-contained page (PNG plots embedded as data URIs).

Plots: loss per round (train and held-out), epsilon spent per dataset per
round against its contract, quality scores per dataset, contributions and the
suggested revenue split. No external assets: the page opens offline.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>dataspace demo — {{ r.run_id }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1f2933;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #d9e2ec}
.sub{color:#52606d} table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e4e7eb;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f0f4f8}
.ok{color:#0b7a3e;font-weight:600} .bad{color:#c81e1e;font-weight:600}
img{max-width:100%;border:1px solid #e4e7eb;border-radius:6px;margin:.5rem 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
code{background:#f0f4f8;padding:0 .25rem;border-radius:3px;font-size:.85rem}
.note{background:#fffbea;border-left:4px solid #f0b429;padding:.5rem 1rem}
</style></head><body>
<h1>dataspace demo</h1>
<p class="sub">run <code>{{ r.run_id }}</code> · engine <b>{{ r.engine }}</b> ·
{{ r.rounds|length }} rounds · {{ r.seconds }} s · workdir <code>{{ r.workdir }}</code></p>
{% if r.engine_note %}<p class="note">{{ r.engine_note }}</p>{% endif %}
<p>Data: <code>{{ r.source }}</code>{% if r.bundled_sample %} (the small sample shipped in the
package){% endif %}. One real recording (Unitree G1 humanoid, pick up a bottle) split by
episode ranges — different recording sessions — over {{ r.sites|length }} holder sites, so
that one model (one embodiment) is federated over non-IID sessions. Raw frames never left
their site: only DP-SGD updates, DP statistics and signed log events did.</p>

<h2>Sites</h2>
<table><tr><th>site</th><th>episodes</th><th>frames</th><th>quality</th>
<th>ε this run</th><th>ε spent</th><th>ε left</th><th>held-out MSE (DP)</th>
<th>contribution</th><th>share</th><th>log</th></tr>
{% for s in r.sites %}<tr><td>{{ s.site }} <span class="sub">({{ s.org }}, episodes
{{ s.episode_range }})</span></td><td>{{ s.episodes }}</td><td>{{ s.frames }}</td>
<td>{{ fmt(s.quality, 0) }}</td><td>{{ fmt(s.epsilon_run, 2) }}</td>
<td>{{ fmt(s.epsilon_spent, 2) }}</td>
<td>{{ fmt(s.epsilon_left, 2) }} / {{ fmt(s.epsilon_budget, 0) }}</td>
<td>{{ fmt(s.heldout_mse, 4) }}</td><td>{{ fmt(s.contribution, 4) }}</td>
<td>{{ pct(s.share) }}</td>
<td class="{{ 'ok' if s.log_verified else 'bad' }}">{{ s.log_status if s.log_verified
else 'FAILED' }} ({{ s.log_size }})</td></tr>{% endfor %}
</table>
<p>Global model: held-out MSE (sites' own held-out episodes, DP-noised)
<b>{{ fmt(r.heldout_mse, 4) }}</b>; on the consumer's own validation episodes
{{ fmt(r.validation_mse.initial, 4) }} → <b>{{ fmt(r.validation_mse.final, 4) }}</b>
(normalised action units). Model SHA-256 <code>{{ r.model_sha256 }}</code>.</p>

<h2>Training</h2>
<div class="grid"><img alt="loss per round" src="{{ plots.loss }}">
<img alt="epsilon per site" src="{{ plots.epsilon }}"></div>
<h2>Quality and value</h2>
<div class="grid"><img alt="quality scores" src="{{ plots.quality }}">
<img alt="contributions" src="{{ plots.contribution }}"></div>
<p class="sub">Quality: the on-site expectation suites' overall score (0–100, GB/T 36344
dimensions). Contribution: GTG-Shapley value of each dataset's DP updates on the decrease of
the consumer's validation MSE, summed over rounds; the share is the suggested revenue split.</p>

<h2>Audit</h2>
<table><tr><th>log</th><th>entries</th><th>rounds</th><th>root</th><th>witnesses</th>
<th>verified</th></tr>
{% for a in r.audit %}<tr><td>{{ a.origin }}</td><td>{{ a.size }}</td><td>{{ a.rounds }}</td>
<td><code>{{ (a.root or '')[:16] }}…</code></td><td>{{ a.witnesses|join(', ') or '—' }}</td>
<td class="{{ 'ok' if a.ok else 'bad' }}">{{ a.status if a.ok else a.first_violation }}</td>
</tr>{% endfor %}</table>
<p class="sub">Checked as an auditor would, with only public keys
(<code>{{ r.workdir }}/auditor/trusted-keys</code>): entry signatures, the Merkle tree against
the signed checkpoint, and the rules (every round under a live contract, epsilon within
budget). Redo it: <code>dataspace audit verify {{ r.workdir }}/sites/site-0
--trusted-keys {{ r.workdir }}/auditor/trusted-keys</code>.</p>
</body></html>
"""
)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(result: Any, run_dir: Path) -> dict[str, str]:
    """The four plots as data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = {s.dataset_id: s.site for s in result.sites}
    rounds = result.rounds
    xs = [r["round"] for r in rounds]
    out = {}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(xs, [r["train_loss"] for r in rounds], "o-", label="train loss (DP-SGD)")
    ax.plot(xs, [r["eval_mse"] for r in rounds], "s-", label="held-out MSE")
    ax.set(xlabel="round", ylabel="MSE (normalised actions)", title="Loss per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    out["loss"] = _png(fig)

    stats = json.loads((run_dir / "stats.json").read_text()) if run_dir.exists() else {}
    eps0 = stats.get("epsilon", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for d, name in names.items():
        ys = [eps0.get(d, 0.0)] + [r["epsilon"].get(d, float("nan")) for r in rounds]
        ax.plot([0, *xs], ys, "o-", label=name)
    contract = max((s.epsilon_run for s in result.sites), default=0)
    ax.set(xlabel="round (0 = DP statistics)", ylabel="epsilon spent in this run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Privacy spent per site (contract ε ≈ {contract:.1f})")
    ax.legend()
    out["epsilon"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = [s.site for s in result.sites]
    q = [s.quality or 0 for s in result.sites]
    bars = ax.bar(labels, q, color="#3e7cb1")
    ax.bar_label(bars, fmt="%.0f")
    ax.set(ylim=(0, 105), ylabel="overall quality score", title="Quality per dataset")
    out["quality"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    c = [s.contribution or 0 for s in result.sites]
    bars = ax.bar(labels, c, color="#2f9e72")
    ax.bar_label(bars, labels=[f"{(s.share or 0) * 100:.0f}%" for s in result.sites], padding=2)
    ax.axhline(0, color="#888", lw=0.8)
    ax.set(ylabel="decrease of validation MSE", title="Contribution (GTG-Shapley) and share")
    out["contribution"] = _png(fig)
    return out


def _fmt(v: Any, digits: int) -> str:
    return "—" if v is None else f"{float(v):.{digits}f}"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{float(v) * 100:.0f}%"


def write_html(result: Any, run_dir: Path, path: Path) -> Path:
    """Render the report for ``result`` (a :class:`.orchestrate.DemoResult`) to ``path``."""
    html = _TEMPLATE.render(r=result, plots=plots(result, run_dir), fmt=_fmt, pct=_pct)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html)
    tmp.replace(path)
    return path
