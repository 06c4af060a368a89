"""The audit report as one self-contained HTML file (Jinja2; plots embedded as PNG data)."""

from __future__ import annotations

import base64
import io
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trojanscope.report.audit_result import CLP_THRESHOLD, AuditResult  # noqa: E402

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trojanscope audit: {{ r.model }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
.verdict{font-size:1.4em;padding:.4em .8em;border-radius:.3em;display:inline-block}
.bad{background:#fdd;color:#900}.ok{background:#dfd;color:#060}.warn{background:#ffd;color:#660}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
</style></head><body>
<h1>Audit of {{ r.model }}</h1>
<p class="verdict {{ css }}">{{ r.verdict }}</p>
{% for note in r.notes %}<p><em>{{ note }}</em></p>{% endfor %}
<h2>File scan: {{ r.scan_verdict }}</h2>
<table><tr><th>location</th><th>format</th><th>verdict</th><th>findings</th></tr>
{% for f in r.scan %}<tr><td>{{ f.location }}</td><td>{{ f.format }}</td><td>{{ f.verdict }}</td>
<td>{% for x in f.findings %}{{ x.severity }}: {{ x.message }}<br>{% endfor %}
{% if f.incomplete %}inconclusive: {{ f.incomplete }}{% endif %}</td></tr>{% endfor %}
</table>
{% if r.trigger_screen %}
<h2>Task-agnostic trigger screen (text encoder, {{ r.arch_params.pooling }} pooling)</h2>
<p>{{ r.trigger_screen.tokens_screened }} candidate tokens, rarest first, each inserted into
clean sentences; a token scoring {{ r.trigger_screen.flag_score }} or more drives them all to
nearly the same pooled output, as a NeuBA trigger does.</p>
<table><tr><th>token</th><th>score</th><th>consistency</th><th>shift</th></tr>
{% for t in r.trigger_screen.top_tokens %}<tr><td>{{ t.token }}</td>
<td>{{ "%.3f"|format(t.score) }}</td><td>{{ "%.3f"|format(t.consistency) }}</td>
<td>{{ "%.3f"|format(t.shift) }}</td></tr>{% endfor %}</table>
{% endif %}
{% if r.patch_screen %}
<h2>Trigger patch screen ({{ r.arch }}, width {{ r.arch_params.width }}: its penultimate
features)</h2>
<p>{{ r.patch_screen.patches_screened }} two-colour candidate patches
({{ r.patch_screen.sizes|join(", ") }} px), each stamped on {{ r.patch_screen.probe_images }}
clean images; a patch scoring {{ r.patch_screen.flag_score }} or more drives them all to nearly
the same pooled output, as a NeuBA trigger does.</p>
<table><tr><th>patch</th><th>score</th><th>consistency</th><th>shift</th></tr>
{% for t in r.patch_screen.top_patches %}<tr><td>{{ t.patch }}</td>
<td>{{ "%.3f"|format(t.score) }}</td><td>{{ "%.3f"|format(t.consistency) }}</td>
<td>{{ "%.3f"|format(t.shift) }}</td></tr>{% endfor %}</table>
{% endif %}
{% if r.arch and r.layer_scores %}
<h2>Backdoor screening ({{ r.arch }}, width {{ r.arch_params.width }})</h2>
{% if r.clean_acc is not none %}
<p>clean accuracy on the given data: {{ "%.3f"|format(r.clean_acc) }}</p>{% endif %}
{% if r.nc %}
<h3>Neural Cleanse</h3>
<p>smallest reversed trigger: label {{ r.nc.candidate_label }}, anomaly index
{{ "%.2f"|format(r.nc.anomaly_index) }} (flagged above 2):
<strong>{% if r.nc.detected_label is not none %}backdoor suspected, target label
{{ r.nc.detected_label }}{% else %}no label stands out{% endif %}</strong></p>
<img alt="mask norm per label" src="data:image/png;base64,{{ norms_png }}">
{% if trigger_png %}
<img alt="reversed trigger" src="data:image/png;base64,{{ trigger_png }}">{% endif %}
{% endif %}
<h3>Per-layer neuron scores (CLP, standardised; outliers above {{ threshold }})</h3>
<img alt="per-layer CLP scores" src="data:image/png;base64,{{ layers_png }}">
<table><tr><th>suspicious neuron</th><th>CLP z</th></tr>
{% for o in r.clp_outliers %}<tr><td>{{ o.neuron }}</td><td>{{ "%.2f"|format(o.clp_z) }}</td></tr>
{% else %}<tr><td colspan="2">none</td></tr>{% endfor %}</table>
{% endif %}
</body></html>
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _layers_plot(result: AuditResult) -> str:
    fig, ax = plt.subplots(figsize=(max(5, len(result.layer_scores) * 0.4), 3.5))
    for i, scores in enumerate(result.layer_scores.values()):
        ax.scatter(
            [i] * len(scores),
            scores,
            s=6,
            c=["red" if s > CLP_THRESHOLD else "grey" for s in scores],
        )
    ax.axhline(CLP_THRESHOLD, color="red", lw=0.8, ls="--")
    ax.set_xticks(
        range(len(result.layer_scores)), list(result.layer_scores), rotation=70, fontsize=7
    )
    ax.set_ylabel("CLP z-score")
    fig.tight_layout()
    return _png(fig)


def _norms_plot(nc: dict[str, Any]) -> str:
    norms = nc["mask_norms"]
    fig, ax = plt.subplots(figsize=(5, 3))
    colors = ["red" if i == nc.get("detected_label") else "grey" for i in range(len(norms))]
    ax.bar(range(len(norms)), norms, color=colors)
    ax.set_xlabel("label")
    ax.set_ylabel("reversed mask L1 norm")
    fig.tight_layout()
    return _png(fig)


def _trigger_plot(result: AuditResult) -> str | None:
    if not result.reversed_trigger:
        return None
    mask = result.reversed_trigger["reversed_mask"]
    pattern = result.reversed_trigger["reversed_pattern"]
    image = (mask * pattern).permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    axes[0].imshow(mask[0].numpy(), cmap="gray")
    axes[0].set_title("mask")
    axes[1].imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray")
    axes[1].set_title("mask x pattern")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def render_audit(result: AuditResult) -> str:
    css = {"no-backdoor-found": "ok", "not-screened": "warn", "inconclusive-scan": "warn"}.get(
        result.verdict, "bad"
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        r=result,
        css=css,
        threshold=CLP_THRESHOLD,
        layers_png=_layers_plot(result) if result.layer_scores else "",
        norms_png=_norms_plot(result.nc) if result.nc else "",
        trigger_png=_trigger_plot(result),
    )
