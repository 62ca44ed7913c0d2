"""Post-mortems: ``raymedic report [INCIDENT_ID | --since 24h] [--out DIR]``.

A report is read from storage alone — the audit (:func:`controllers.audit.read_audit`)
and the time series the controller keeps for it (:mod:`controllers.series`) — so it
works on a running service and after ``raymedic down`` alike, with no cluster.

For one incident, or for every incident of a period, it writes:

- ``report.html``: one self-contained page (inline CSS, the plots as base64 PNG
  data URIs, no script, nothing fetched at view time) to open or mail;
- ``report.md`` and the PNGs next to it, for a ticket.

Each incident has its timeline (detect → decide → act → recovered, from the audit),
its evidence, the action's outcome, and — where the diagnosis recorded them — its
root cause, confidence and effects. The plots cover the incident ± ``margin_s``
(the period, for ``--since``): request rate with failed and degraded answers,
p50/p99 latency, each member's weight, live accuracy against the label-free
estimate, and the drifting features' training vs window distributions.

What an incident is comes from the audit: the records sharing an ``incident`` id,
plus the retrain and trial records that name it (``evidence.alerts``) and those of
the incidents it lists as ``effects``. Grouping incidents by cause is the
diagnosis' job; this module only shows what the records say.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from controllers.audit import read_audit
from controllers.policies.group_audit import GROUP_RECORD_KIND
from controllers.series import RowKind, read_series
from raymedic.app import report_plots
from raymedic.enums import StrEnum
from raymedic.errors import RaymedicError
from raymedic.storage import Storage

__all__ = ["IncidentView", "Phase", "Report", "ReportFiles", "build_report", "gather", "incidents_in", "phase_of",
           "view_of", "write_report"]

DEFAULT_MARGIN_S = 300.0
"""Minutes of series on each side of an incident: the calm before, the recovery after."""
_NOT_PHASED = frozenset({"weights", "controller-started"})
"""Kinds that are context, never a step of an incident's timeline (they carry no incident id anyway)."""


class Phase(StrEnum):
    """Where a record falls in an incident's timeline."""

    DETECT = "detect"
    DECIDE = "decide"
    ACT = "act"
    RECOVERED = "recovered"
    FAILED = "failed"


def phase_of(rec: dict[str, Any]) -> Phase:
    """The timeline step of one audit record, from its kind and outcome.

    >>> [phase_of(r).value for r in ({"kind": "detected-dead"}, {"kind": "data-drift", "outcome": "opened"},
    ...  {"kind": "proposed"}, {"kind": "restart"}, {"kind": "recovered"}, {"kind": "restart-failed"},
    ...  {"kind": "data-drift", "outcome": "cleared"}, {"kind": "incident-group", "outcome": "formed"})]
    ['detect', 'detect', 'decide', 'act', 'recovered', 'failed', 'recovered', 'detect']
    """
    kind, outcome = str(rec.get("kind", "")), str(rec.get("outcome", ""))
    if kind.startswith("detected") or kind == GROUP_RECORD_KIND or outcome in ("opened", "escalated"):
        return Phase.DETECT
    if kind in ("recovered", "slo-restored") or outcome == "cleared":
        return Phase.RECOVERED
    if "failed" in kind or outcome.startswith(("failed", "error")):
        return Phase.FAILED
    if kind.startswith(("propos", "approv", "reject", "decid", "retrain-submitted")) or outcome == "proposed":
        return Phase.DECIDE
    return Phase.ACT


@dataclass(frozen=True, kw_only=True)
class IncidentView:
    """One incident as the audit tells it (plain data for the page)."""

    id: str
    kind: str
    target: str
    detected_at: float
    recovered_at: float | None
    records: tuple[dict[str, Any], ...]
    diagnosis: dict[str, Any] = field(default_factory=dict)  # cause, confidence, effects... where recorded

    @property
    def start(self) -> float:
        return min(self.detected_at, *(float(r["ts"]) for r in self.records))

    @property
    def end(self) -> float:
        last = max(float(r["ts"]) for r in self.records)
        return max(last, self.recovered_at or last)

    @property
    def status(self) -> str:
        """recovered, failed or open, from the last record that says so."""
        phases = [phase_of(r) for r in self.records]
        if Phase.RECOVERED in phases or self.recovered_at is not None:
            return "recovered"
        return "failed" if Phase.FAILED in phases else "open"

    @property
    def outcome(self) -> str:
        """The last action's outcome, as recorded."""
        acts = [r for r in self.records if phase_of(r) in (Phase.ACT, Phase.RECOVERED, Phase.FAILED)]
        last = (acts or list(self.records))[-1]
        return f"{last.get('kind')}: {last.get('action', '')} → {last.get('outcome', '')}".strip()


_DIAGNOSIS_FIELDS = ("cause_class", "cause", "confidence", "cause_node", "cause_feature", "cause_members",
                     "cause_evidence", "group", "group_cause_incident", "effects", "time_to_detect_s",
                     "time_to_recover_s")
"""What a diagnosis adds to an incident's records (h-diag's fields), shown where present, in this order."""


def _diagnosis(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The diagnosis fields the records carry (the latest of each), at the top or in the evidence."""
    found: dict[str, Any] = {}
    for r in records:
        for src in (r.get("evidence") if isinstance(r.get("evidence"), dict) else {}, r):
            for k in _DIAGNOSIS_FIELDS:
                if src.get(k) not in (None, "", [], {}):
                    found[k] = src[k]
    return {k: found[k] for k in _DIAGNOSIS_FIELDS if k in found}


def incidents_in(records: Sequence[dict[str, Any]]) -> list[IncidentView]:
    """Every incident in ``records`` (audit order), oldest first, with the records that belong to it.

    >>> recs = [{"ts": 1.0, "kind": "detected-dead", "target": "mlp/r1", "incident": "inc-1", "detected_at": 0.5},
    ...         {"ts": 2.0, "kind": "data-drift", "target": "f0", "incident": "d0001", "outcome": "opened"},
    ...         {"ts": 3.0, "kind": "retrain-submitted", "target": "m", "incident": "r0001",
    ...          "evidence": {"alerts": ["d0001"]}},
    ...         {"ts": 4.0, "kind": "recovered", "target": "mlp/r1", "incident": "inc-1", "recovered_at": 4.0}]
    >>> [(i.id, len(i.records), i.status) for i in incidents_in(recs)]
    [('inc-1', 2, 'recovered'), ('d0001', 2, 'open')]
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("incident") and r.get("kind") not in _NOT_PHASED:
            by_id.setdefault(str(r["incident"]), []).append(r)
    # A group's own record goes with the first incident it names that has records (its cause's, else its first
    # effect's): its effects then group them below like the effects an incident's own records carry.
    for r in records:
        named = r.get("incidents") if r.get("kind") == GROUP_RECORD_KIND and not r.get("incident") else None
        home = next((str(i) for i in named or () if str(i) in by_id), None)
        if home is not None:
            by_id[home].append(r)
    # A retrain (or trial) that names alerts belongs to the first of them, not on its own.
    owner: dict[str, str] = {}
    for iid, recs in by_id.items():
        for r in recs:
            alerts = (r.get("evidence") or {}).get("alerts") if isinstance(r.get("evidence"), dict) else None
            named = [a for a in alerts or () if a in by_id and a != iid]
            if named and iid not in owner:
                owner[iid] = named[0]
    # Incidents the diagnosis grouped (one cause, its effects) are one: under the cause's own incident when
    # there is one (a node-pressure or drift alert), else under the group's first.
    first_ts = {iid: min(float(r["ts"]) for r in recs) for iid, recs in by_id.items()}
    for iid, recs in by_id.items():
        diag = _diagnosis(recs)
        group = {iid, *(e for e in diag.get("effects") or () if isinstance(e, str))} & set(by_id)
        cause = diag.get("group_cause_incident")
        lead = cause if cause in by_id else min(group, key=lambda i: (first_ts[i], i))  # ties: the lower id
        for other in group - {lead}:
            owner.setdefault(other, lead)
    for iid in list(owner):  # follow chains (an effect's owner owned in turn) to the top, never in a circle
        seen = {iid}
        while owner[iid] in owner and owner[iid] not in seen:
            seen.add(owner[iid])
            owner[iid] = owner[owner[iid]]
        if owner[iid] == iid:
            del owner[iid]
    views = []
    for iid, recs in by_id.items():
        if iid in owner:
            continue
        members = list(recs) + [r for other, o in owner.items() if o == iid for r in by_id[other]]
        members.sort(key=lambda r: float(r.get("ts", 0)))
        first = members[0]
        detected = min(float(r.get("detected_at") or r.get("first_evidence_at") or r["ts"]) for r in recs)
        recovered = max((float(r["recovered_at"]) for r in recs if r.get("recovered_at")), default=None)
        views.append(IncidentView(id=iid, kind=str(first.get("kind", "")), target=str(first.get("target", "")),
                                  detected_at=detected, recovered_at=recovered, records=tuple(members),
                                  diagnosis=_diagnosis(members)))
    views.sort(key=lambda v: v.detected_at)
    return views


def view_of(views: Sequence[IncidentView], incident: str) -> IncidentView | None:
    """The view that shows ``incident``: its own, else the one it is grouped under (an effect of a group is
    shown with the group's lead), else the one holding the group of that id (``grp-...``).

    >>> recs = [{"ts": 1.0, "kind": "detected-dead", "target": "mlp/r1", "incident": "inc-1", "detected_at": 1.0},
    ...         {"ts": 2.0, "kind": "detected-dead", "target": "lr/r2", "incident": "inc-2", "detected_at": 2.0},
    ...         {"ts": 3.0, "kind": "incident-group", "target": "worker-1", "group": "grp-inc-1",
    ...          "incidents": ["inc-1", "inc-2"], "effects": ["inc-1", "inc-2"], "outcome": "formed"}]
    >>> views = incidents_in(recs)
    >>> [v.id for v in views], view_of(views, "inc-2").id, view_of(views, "grp-inc-1").id
    (['inc-1'], 'inc-1', 'inc-1')
    >>> views[0].diagnosis["group"], [r["kind"] for r in views[0].records]
    ('grp-inc-1', ['detected-dead', 'detected-dead', 'incident-group'])
    """
    own = next((v for v in views if v.id == incident), None)
    if own is not None:
        return own
    return next((v for v in views if any(str(r.get("incident")) == incident or r.get("group") == incident
                                         for r in v.records)), None)


@dataclass(frozen=True, kw_only=True)
class Report:
    """What one report shows: the incidents, the window of the plots, and the rows in it."""

    model: str
    title: str
    slug: str
    start: float
    end: float
    incidents: list[IncidentView]
    series: list[dict[str, Any]]
    context: list[dict[str, Any]]  # the other audit records of the window (weights, SLO, starts), for the page


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written."""

    html: Path
    markdown: Path
    images: list[Path]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def gather(storage: Storage, model: str, *, incident: str | None = None, since: float | None = None,
           now: float | None = None, margin_s: float = DEFAULT_MARGIN_S) -> Report:
    """The report of ``incident`` (its records and the series ± ``margin_s``), or of every incident since
    ``since`` (the series from then to ``now``).

    Raises:
        RaymedicError: No audit for ``model``; an unknown incident id (the message lists those there are);
            a period with no incident (the message says when the audit has some).
    """
    now = time.time() if now is None else now
    trail = read_audit(storage, model)
    if not trail:
        raise RaymedicError(f"no audit records for model {model!r} under {storage.uri}: has a service of it run "
                            "with this storage_path? (--config or --model pick another)")
    every = incidents_in(trail)
    if incident is not None:
        found = view_of(every, incident)
        if found is None:
            ids = [v.id for v in every]
            shown = ", ".join(ids[-15:]) + (f" (and {len(ids) - 15} older)" if len(ids) > 15 else "")
            raise RaymedicError(f"no incident {incident!r} in the audit of {model!r}; "
                                + (f"incidents there: {shown}" if ids else "it records no incident yet"))
        start, end = found.start - margin_s, min(found.end + margin_s, now)
        grouped = f", grouped under {found.id}" if found.id != incident else ""
        chosen, title = [found], f"Incident {incident} ({found.kind} on {found.target}{grouped})"
        slug = f"{model}-{incident}"
    else:
        since = now - 86400.0 if since is None else since
        chosen = [v for v in every if v.end >= since and v.start <= now]
        if not chosen:
            hint = (f"the audit's incidents run from {_when(every[0].detected_at)} to {_when(every[-1].detected_at)} "
                    f"({len(every)}): give an earlier --since or an id ({every[-1].id})" if every
                    else "the audit records no incident yet")
            raise RaymedicError(f"no incident of {model!r} since {_when(since)}; {hint}")
        start, end = since, now
        title = f"Incidents of {model} since {_when(since)}"
        slug = f"{model}-since-{datetime.fromtimestamp(since).strftime('%Y%m%d-%H%M%S')}"
    ids = {id(r) for v in chosen for r in v.records}
    context = [r for r in trail if start <= float(r["ts"]) <= end and id(r) not in ids
               and r.get("kind") in ("controller-started", "slo-breach", "slo-restored", "promote", "rollback",
                                     "trial-started", "trial-finished", "trial-promote", "paused", "resumed")]
    return Report(model=model, title=title, slug=slug, start=start, end=end, incidents=chosen,
                  series=read_series(storage, model, since=start, until=end), context=context)


# ---- rendering ----------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #dde;padding-bottom:.2em}
.meta{color:#667}.card{border:1px solid #dde;border-radius:8px;padding:.8em 1.1em;margin:1em 0;background:#fafbfe}
table{border-collapse:collapse;width:100%;margin:.6em 0}td,th{border-bottom:1px solid #e6e8f0;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#f0f2f8}
.phase{font-weight:600;border-radius:4px;padding:0 .4em}.detect{background:#ffe2cc}.decide{background:#e4e0ff}
.act{background:#d8ecff}.recovered{background:#d6f5dd}.failed{background:#ffd6d6}.open{background:#fff2b3}
code,pre{font:12px ui-monospace,Menlo,Consolas,monospace}pre{white-space:pre-wrap;margin:0}
img{max-width:100%;height:auto;display:block;margin:.5em 0;border:1px solid #eef}
"""


def _fmt_evidence(ev: Any, limit: int = 600) -> str:
    text = json.dumps(ev, default=str, sort_keys=True) if not isinstance(ev, str) else ev
    return text if len(text) <= limit else text[:limit] + "…"


def _timeline(view: IncidentView) -> list[tuple[str, str, str, str, str]]:
    """(phase, +seconds from detection, kind, target, action → outcome) per record."""
    return [(phase_of(r).value, f"{float(r['ts']) - view.detected_at:+.1f} s", str(r.get("kind", "")),
             str(r.get("target", "")), f"{r.get('action', '')} → {r.get('outcome', '')}") for r in view.records]


def _time_to_detect(view: IncidentView) -> float | None:
    """The diagnosis' time to detect, else the detection's lag behind its first evidence (replica incidents)."""
    if isinstance(view.diagnosis.get("time_to_detect_s"), (int, float)):
        return float(view.diagnosis["time_to_detect_s"])
    first = next((r for r in view.records if r.get("first_evidence_at") and r.get("detected_at")), None)
    return float(first["detected_at"]) - float(first["first_evidence_at"]) if first else None


def _summary(view: IncidentView) -> list[tuple[str, str]]:
    detect = _time_to_detect(view)
    rows = [("status", view.status), ("detected", _when(view.detected_at)),
            ("time to detect", f"{detect:.1f} s" if detect is not None else "—"),
            ("recovered", _when(view.recovered_at) if view.recovered_at else "—"),
            ("time to recover", f"{view.recovered_at - view.detected_at:.1f} s" if view.recovered_at else "—"),
            ("outcome", view.outcome)]
    for k, v in view.diagnosis.items():
        if k not in ("time_to_detect_s", "time_to_recover_s"):
            rows.append((k.replace("_", " "), v if isinstance(v, str) else json.dumps(v, default=str)))
    return rows


def _images(report: Report) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG) of every plot the series allows; none when it holds nothing for the window."""
    marks = [(v.detected_at, f"{v.id} detected") for v in report.incidents]
    marks += [(v.recovered_at, f"{v.id} recovered") for v in report.incidents if v.recovered_at]
    marks += [(float(r["ts"]), str(r["kind"])) for v in report.incidents for r in v.records
              if phase_of(r) == Phase.ACT][:20]
    buckets = [r for r in report.series if r.get("kind") == RowKind.BUCKET.value]
    drifts = [r for r in report.series if r.get("kind") == RowKind.DRIFT.value]
    # The plots span the window where the series has data (a service younger than the margin starts later).
    start, end = report.start, report.end
    if buckets:
        start = max(start, float(buckets[0]["ts"]) - float(buckets[0].get("bucket_s", 0)))
        end = min(end, float(buckets[-1]["ts"]) + 2 * float(buckets[-1].get("bucket_s", 0)))
    end = max(end, *(ts for ts, _ in marks if ts <= report.end), start + 1.0) if marks else max(end, start + 1.0)
    out = []
    for name, caption, fn in (("traffic.png", "Request rate, failed and degraded answers", report_plots.traffic),
                              ("latency.png", "Latency p50 / p99 (each gateway's last 10 s)", report_plots.latency),
                              ("weights.png", "Ensemble weights per member", report_plots.weights),
                              ("accuracy.png", "Live labelled accuracy vs the label-free estimate",
                               report_plots.accuracy)):
        png = fn(buckets, marks=marks, start=start, end=end)
        if png is not None:
            out.append((name, caption, png))
    seen: set[str] = set()
    for d in reversed(drifts):  # the latest distribution of each feature
        if d["feature"] in seen or len(seen) >= 6:
            continue
        seen.add(d["feature"])
        png = report_plots.distribution(d)
        if png is not None:
            out.append((f"drift-{_safe(d['feature'])}.png",
                        f"Feature {d['feature']}: training vs the window at {_when(d['ts'])}", png))
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))[:60] or "feature"


def _html(report: Report, images: list[tuple[str, str, bytes]]) -> str:
    e = html.escape
    parts = [(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(report.title)}</title>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head><body>"),
             (f"<h1>{e(report.title)}</h1><p class='meta'>model <b>{e(report.model)}</b> · window "
             f"{e(_when(report.start))} → {e(_when(report.end))} · {len(report.incidents)} incident(s) · written "
             f"{e(_when(time.time()))} by raymedic report</p>")]
    parts.append("<h2>Incidents</h2><table><tr><th>incident</th><th>kind</th><th>target</th><th>detected</th>"
                 "<th>status</th><th>outcome</th></tr>")
    for v in report.incidents:
        parts.append(f"<tr><td><a href='#{e(v.id)}'>{e(v.id)}</a></td><td>{e(v.kind)}</td><td>{e(v.target)}</td>"
                     f"<td>{e(_when(v.detected_at))}</td><td><span class='phase {e(v.status)}'>{e(v.status)}</span>"
                     f"</td><td>{e(v.outcome)}</td></tr>")
    parts.append("</table>")
    if images:
        parts.append("<h2>Around the incident" + ("s" if len(report.incidents) > 1 else "") + "</h2><p class='meta'>"
                     "Dashed lines: orange, detected; purple, an action; green, recovered. Series in buckets of "
                     f"{e(str(report.series[0].get('bucket_s', '?')) if report.series else '?')} s, written by the "
                     "controller under storage_path/series/.</p>")
        for name, caption, png in images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(caption)}' id='{e(name)}'>"
                         f"<figcaption class='meta'>{e(caption)}</figcaption></figure>")
    else:
        parts.append("<p class='meta'>No time series for this window under storage_path/series/ (a controller "
                     "from before the series, or older than its retention): the timeline is all there is.</p>")
    for v in report.incidents:
        parts.append(f"<h2 id='{e(v.id)}'>{e(v.id)}: {e(v.kind)} on {e(v.target)}</h2><div class='card'><table>")
        parts += [f"<tr><th>{e(k)}</th><td>{e(str(val))}</td></tr>" for k, val in _summary(v)]
        parts.append("</table></div><table><tr><th>step</th><th>when</th><th>kind</th><th>target</th>"
                     "<th>action → outcome</th><th>evidence</th></tr>")
        for (phase, rel, kind, target, act), r in zip(_timeline(v), v.records):
            parts.append(f"<tr><td><span class='phase {phase}'>{phase}</span></td><td>{e(rel)}</td><td>{e(kind)}</td>"
                         f"<td>{e(target)}</td><td>{e(act)}</td><td><pre>{e(_fmt_evidence(r.get('evidence')))}"
                         "</pre></td></tr>")
        parts.append("</table>")
    if report.context:
        parts.append("<h2>Also in the window</h2><table><tr><th>when</th><th>kind</th><th>target</th>"
                     "<th>outcome</th></tr>")
        parts += [f"<tr><td>{e(_when(float(r['ts'])))}</td><td>{e(str(r.get('kind')))}</td>"
                  f"<td>{e(str(r.get('target')))}</td><td>{e(str(r.get('outcome', '')))}</td></tr>"
                  for r in report.context[-50:]]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(report: Report, images: list[tuple[str, str, bytes]]) -> str:
    lines = [f"# {report.title}", "",
             (f"Model **{report.model}**, window {_when(report.start)} → {_when(report.end)}, "
             f"{len(report.incidents)} incident(s)."), "",
             "| incident | kind | target | detected | status | outcome |", "|---|---|---|---|---|---|"]
    lines += [f"| {v.id} | {_md_cell(v.kind)} | {_md_cell(v.target)} | {_when(v.detected_at)} | {v.status} | "
              f"{_md_cell(v.outcome)} |" for v in report.incidents]
    lines.append("")
    for name, caption, _ in images:
        lines += [f"![{caption}]({name})", ""]
    for v in report.incidents:
        lines += [f"## {v.id}: {v.kind} on {v.target}", ""]
        lines += [f"- **{k}**: {_md_cell(val)}" for k, val in _summary(v)]
        lines += ["", "| step | when | kind | target | action → outcome | evidence |", "|---|---|---|---|---|---|"]
        lines += [f"| {p} | {rel} | {_md_cell(k)} | {_md_cell(t)} | {_md_cell(a)} | "
                  f"`{_md_cell(_fmt_evidence(r.get('evidence'), 200))}` |"
                  for (p, rel, k, t, a), r in zip(_timeline(v), v.records)]
        lines.append("")
    return "\n".join(lines)


def write_report(report: Report, out_dir: str | Path) -> ReportFiles:
    """Write ``report`` into ``out_dir/<slug>/``: the page, the Markdown and its PNGs (replaced if there)."""
    folder = Path(out_dir).expanduser() / report.slug
    folder.mkdir(parents=True, exist_ok=True)
    images = _images(report)
    paths = []
    for name, _, png in images:
        (folder / name).write_bytes(png)
        paths.append(folder / name)
    page, md = folder / "report.html", folder / "report.md"
    page.write_text(_html(report, images), encoding="utf-8")
    md.write_text(_markdown(report, images), encoding="utf-8")
    return ReportFiles(html=page, markdown=md, images=paths)


def build_report(storage: Storage, model: str, *, out_dir: str | Path, incident: str | None = None,
                 since: float | None = None, now: float | None = None,
                 margin_s: float = DEFAULT_MARGIN_S) -> ReportFiles:
    """:func:`gather` then :func:`write_report` (what ``raymedic report`` and the demo call)."""
    return write_report(gather(storage, model, incident=incident, since=since, now=now, margin_s=margin_s), out_dir)
