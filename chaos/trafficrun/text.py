"""report.txt from report.json: the verdict, the invariants, the figures."""

from __future__ import annotations


def _f(x, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if x is None else fmt.format(x)


def render(r: dict) -> str:
    c, f = r["config"], r["figures"]
    scale = c["time_scale"]
    v, sc = r["verify"], r["second_consumer"]
    lines = [
        f"traffic run: {r['verdict']}",
        f"  profile {c['profile']}, {f['orders_sent']} orders over {c['groups']} groups ({c['group_mode']}), "
        f"time scale {scale}, seed {c['seed']}",
        f"  lost {v.get('lost')}, applied twice {v.get('applied_twice')}, out of order {v.get('out_of_order')}, "
        f"gaps {v.get('position_gaps')}, second-consumer receives {sc['second_consumer_receives']} "
        f"(redelivered {sc['redelivered']}, explained {sc['explained_by']})",
    ]
    rec = f.get("burst_start_to_backlog_under_target")
    if rec:
        if rec.get("above_target_at") is None:
            lines.append(f"  flash sale: the backlog never went above the target (peak {rec['peak_per_instance']:.0f}"
                         " per instance)")  # fmt: skip
        else:
            s = rec.get("seconds")
            lines.append(f"  flash sale start -> backlog back under target: {_f(s, '{:.1f}')} s real = "
                         f"{_f(None if s is None else s / scale / 60, '{:.1f}')} simulated minutes "
                         f"(peak {rec['peak_per_instance']:.0f} per instance)")  # fmt: skip
    sr = f.get("send_rates")
    if sr:
        lines.append(f"  sent: busiest simulated minute {sr['peak_per_minute']} orders, the day's median minute "
                     f"{sr['day_median_per_minute']}: an achieved burst of {_f(sr['achieved_burst_ratio'], '{:.1f}')}x")  # fmt: skip
    lat = f["send_to_record_seconds"]
    lines.append(f"  send -> record: p50 {_f(lat['p50'])} s, p99 {_f(lat['p99'])} s, max {_f(lat['max'])} s real "
                 f"(simulated: x{1 / scale:g}); oldest message age peak {f['oldest_message_age_seconds_max']:.1f} s")  # fmt: skip
    fl = f["fleet"]
    lines.append(f"  instance-minutes (simulated) {fl['instance_minutes']:.1f} vs a fixed fleet of "
                 f"{fl['peak_desired']} (the peak) {fl['fixed_fleet_instance_minutes']:.1f}"
                 f" ({_f(fl['saved_share'], '{:.0%}')} saved)")  # fmt: skip
    cost, p = f["compute_cost_per_million_orders"], f["prices"]
    lines.append(f"  compute per million orders ({f['instance_type']}, prices of {p['recorded']}): "
                 f"Spot ${_f(cost['spot'])} (at ${p['spot_hourly']}/h), On-Demand ${_f(cost['on_demand'])} "
                 f"(at ${p['on_demand_hourly']}/h); fixed peak fleet: Spot ${_f(cost['fixed_fleet_spot'])}, "
                 f"On-Demand ${_f(cost['fixed_fleet_on_demand'])}")  # fmt: skip
    ev = f["scale_events"]
    lines.append(f"  scale events {len(ev)} ({sum(1 for e in ev if e['kind'] == 'scale_out')} out, "
                 f"{sum(1 for e in ev if e['kind'] == 'scale_in')} in); Spot events {f['spot_events']}; "
                 f"instances with orders {len(f['orders_per_instance'])}")  # fmt: skip
    left = r.get("leavers") or []
    lines.append(f"  terminated by the group: {len(left)} ({sum(1 for x in left if x['hook_completed'])} completed "
                 "their hook)")  # fmt: skip
    if r.get("refresh"):
        rf = r["refresh"]
        lines.append(f"  instance refresh {rf['id']}: {rf.get('status')} ({rf.get('replaced')} replaced, "
                     f"build B = launch template version {rf['version']}, preferences {rf['preferences']})")  # fmt: skip
    for x in r["failures"]:
        lines.append(f"  {x}")
    return "\n".join(lines) + "\n"
