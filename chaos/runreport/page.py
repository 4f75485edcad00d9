"""The report's HTML page: the interruption told in a sentence, the per-group view (drawn by the page's own
script from model.group_data's JSON, so that check-report.py can check what a browser renders), the timeline,
the EMF figures, the summary and the audit's examples."""

from __future__ import annotations

import html
import json
import time

from .inputs import EMF_SUMS
from .model import group_data, hook_time
from .svg import render_svg
from .text import secs


def render_figures(figures: dict) -> str:
    rows = []
    for inst, f in sorted(figures.items()):
        if not f:
            continue
        d = f["drain"]
        drain = (
            f"finished {d.get('DrainOrdersFinished')}, released {d.get('DrainOrdersReleased')}, "
            f"deadline hit {d.get('DrainDeadlineHit')}, hook completed {d.get('HookCompleted')}, "
            f"{d.get('DrainSeconds')} s"
            if d
            else "-"
        )
        cells = "".join(f"<td>{f[k]}</td>" for k in EMF_SUMS)
        rows.append(
            f'<tr class="emf-row" data-instance="{html.escape(inst)}"><td>{html.escape(inst)}</td>{cells}<td>{html.escape(drain)}</td></tr>'
        )
    if not rows:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("instance", *EMF_SUMS, "drain record"))
    return (
        "<h2>Figures, as CloudWatch would extract them</h2><p>From each worker's EMF records in its JSON log "
        "(the same lines the CloudWatch agent ships on AWS): interval deltas summed, and the drain record.</p>"
        f'<table id="emf-figures" border="1" cellpadding="3" style="border-collapse:collapse;font-size:13px">'
        f"<tr>{head}</tr>{''.join(rows)}</table>"
    )


GROUP_VIEW_JS = r"""
(function () {
  var err = document.getElementById('render-error');
  window.addEventListener('error', function (e) { err.textContent = 'The page failed to render: ' + e.message; });
  var data = JSON.parse(document.getElementById('group-data').textContent);
  var colour = {}, role = {};
  data.instances.forEach(function (i) { colour[i.id] = i.color; role[i.id] = i.role; });
  function hms(t) { return new Date(t * 1000).toISOString().substr(11, 12); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  var legend = document.getElementById('group-legend');
  data.instances.forEach(function (i) {
    var item = el('span', 'legend-instance');
    item.dataset.instance = i.id;
    item.dataset.role = i.role;
    var sw = el('span', 'swatch');
    sw.style.background = i.color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(i.id + (i.role === 'interrupted' ? ' (interrupted)' :
      i.role === 'replacement' ? ' (replaces ' + i.replaces + ')' : '')));
    legend.appendChild(item);
  });
  var view = document.getElementById('groups');
  data.groups.forEach(function (g) {
    var row = el('div', 'group-row');
    row.dataset.group = g.group;
    row.appendChild(el('span', 'group-name', g.label));
    var cells = el('span', 'cells');
    var marks = data.interruptions.slice().sort(function (a, b) { return a.notice - b.notice; });
    var m = 0;
    g.orders.forEach(function (o) {
      while (m < marks.length && o.at > marks[m].notice) {
        var mk = el('span', 'mark-interruption', '\u26a1');
        mk.dataset.instance = marks[m].id;
        mk.title = 'interruption notice to ' + marks[m].id + ' at ' + hms(marks[m].notice);
        cells.appendChild(mk);
        m++;
      }
      var c = el('span', 'cell', String(o.pos));
      c.dataset.pos = o.pos;
      c.dataset.instance = o.by;
      c.style.background = colour[o.by] || '#999';
      var it = data.interruptions.filter(function (x) { return x.id === o.by; })[0];
      if (it && it.drain_start && o.at >= it.drain_start && (!it.hook || o.at <= it.hook + 0.5)) {
        c.classList.add('finished-in-drain');
      }
      if (o.rc > 1) c.classList.add('received-again');
      c.title = o.id + ' #' + o.pos + ' applied by ' + o.by + ' at ' + hms(o.at) + (o.rc > 1 ? ' (received ' + o.rc + ' times)' : '');
      cells.appendChild(c);
    });
    row.appendChild(cells);
    view.appendChild(row);
  });
  view.dataset.rendered = String(data.groups.length);
})();
"""


def render_html(
    title, summary, records, stories, per_instance, verify, ok, interrupted, handovers, figures=None
) -> str:
    svg = render_svg(records, stories, per_instance)
    data = group_data(records, stories, per_instance, interrupted)
    examples = "".join(f"<li>{html.escape(e)}</li>" for e in (verify or {}).get("examples", []))
    verdict = f'<b id="verdict" style="color:{"#2a2" if ok else "#c22"}">{"OK" if ok else "FAILED"}</b>'
    story = []
    for s in interrupted:
        h = handovers.get(s["id"], [])
        went = sorted({c["instance"] for g in h for c in g["continued"]})
        story.append(
            f'<li class="interruption-story" data-instance="{html.escape(s["id"])}"><b>{html.escape(s["id"])}</b> was interrupted '
            f"while holding {s.get('drain_groups_held', '?')} groups and {s.get('drain_messages_held', '?')} messages: its drain "
            f"<b>finished {html.escape(str(s.get('drain_finished', '?')))}</b> orders in flight and "
            f"<b>released {html.escape(str(s.get('drain_released', '?')))}</b>, and completed the lifecycle hook "
            f"{secs(s.get('drain_start'), hook_time(s))} after the drain started ({secs(s.get('notice'), hook_time(s))} after the notice). "
            f"Its {len(h)} groups went on on {html.escape(', '.join(went) or 'no other instance')}, in order.</li>"
        )
    # The JSON sits in a script element: only "</" could end it early.
    blob = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1060px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
.legend span{{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px}}
#render-error{{color:#c22;font-weight:bold}}
.group-row{{display:flex;align-items:center;margin:3px 0}}
.group-name{{width:80px;font-size:13px;color:#333}}
.cells{{display:flex;align-items:center;flex-wrap:wrap}}
.cell{{display:inline-block;width:30px;height:24px;line-height:24px;margin:1px;text-align:center;color:#fff;
  font-size:12px;font-weight:bold;border-radius:3px;position:relative;box-sizing:border-box}}
.cell.finished-in-drain{{border:3px solid #000;line-height:18px}}
.cell.received-again::after{{content:"";position:absolute;top:2px;right:2px;width:6px;height:6px;border-radius:3px;background:#fff}}
.mark-interruption{{display:inline-block;width:14px;height:30px;line-height:30px;margin:0 2px;text-align:center;
  background:#222;color:#ffd700;font-size:12px;border-radius:2px}}
.legend-instance{{display:inline-block;margin:0 14px 4px 0;font-size:13px}}
.legend-instance .swatch{{display:inline-block;width:14px;height:14px;margin-right:4px;vertical-align:-2px;border-radius:3px}}
.key span{{margin-right:14px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Verdict: {verdict}. Generated {time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())} UTC.</p>
<ul>{"".join(story)}</ul>
<h2>Each group in order</h2>
<p>One row per message group: its orders by position (1, 2, 3…), each coloured by the instance that applied it.
<span class="key"><span><span class="mark-interruption">&#x26a1;</span> the interruption notice</span>
<span><span class="cell finished-in-drain" style="background:#888">n</span> finished by the interrupted instance during its drain</span>
<span><span class="cell received-again" style="background:#888">n</span> received again (released by the drain)</span></span></p>
<div id="group-legend"></div>
<p id="render-error"></p>
<div id="groups"></div>
<noscript><p>The per-group view needs JavaScript; the summary below has the same facts.</p></noscript>
<script type="application/json" id="group-data">{blob}</script>
<script>{GROUP_VIEW_JS}</script>
<h2>Timeline</h2>
<p>Top: orders applied per instance over time (cumulative, from the orders table's <code>ProcessedAt</code> and
<code>ProcessedBy</code>). Below: one lane per instance, its lifecycle state as the background
<span class="legend"><span style="background:#d8f0d8"></span>InService<span style="background:#ffe0a0"></span>Terminating:Wait
<span style="background:#f4b0a0"></span>Terminating:Proceed</span>, one tick per order applied, and the marks of the
interruption (from spot-sim's events and the worker's log).</p>
{svg}
{render_figures(figures or {})}
<h2>Summary</h2>
<pre id="summary">{html.escape(summary)}</pre>
{"<h2>Audit examples</h2><ul>" + examples + "</ul>" if examples else ""}
</body></html>
"""
