"""Reads the JSON lines of scripts/compare-anchors.sh and prints typed-session against the
anchors as Markdown tables, with the project's targets beside each ratio."""
import sys

from results import finder, load

rows = load(sys.argv[1])
find = finder(rows)


def fmt(x, digits=2):
    return "–" if x is None else f"{x:,.{digits}f}"


print("### A. Throughput, memory store (medians; ours on one core unless noted)\n")
print("| workload | runtime | Telegraf upd/s | typed-session upd/s | × Telegraf (target ≥ 20) | Telegraf cost µs | our cost µs | cost ÷ (target ≥ 20) | Telegraf RSS MB | our RSS MB | ÷ (target ≥ 4) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for wl in ["seq", "conc"]:
    tb, ts = find(bench="throughput", fw="telegraf", workload=wl, variant="baseline"), find(bench="throughput", fw="telegraf", workload=wl, variant="session")
    for rt in ["current-thread", "multi-thread"]:
        ob = find(bench="throughput", fw="typed-session", workload=wl, variant="baseline", runtime=rt)
        os_ = find(bench="throughput", fw="typed-session", workload=wl, variant="session", runtime=rt)
        if not (tb and ts and ob and os_):
            continue
        t_cost, o_cost = ts["us_per_update"] - tb["us_per_update"], os_["us_per_update"] - ob["us_per_update"]
        print(f"| {wl} | {rt} | {ts['median_ups']:,.0f} | {os_['median_ups']:,.0f} | {os_['median_ups'] / ts['median_ups']:.1f} "
              f"| {t_cost:.2f} | {o_cost:.2f} | {t_cost / o_cost:.1f} | {ts['peak_rss_mb']} | {os_['peak_rss_mb']} | {ts['peak_rss_mb'] / os_['peak_rss_mb']:.1f} |")

print("\n### C. Store traffic per update (20-field session, 347 bytes of JSON)\n")
print("| scenario | feed | Telegraf sets/upd | ours sets/upd | Telegraf bytes/upd | ours bytes/upd | ÷ (target ≥ 10 for write1) |")
print("|---|---|---|---|---|---|---|")
for sc in ["write1", "read", "none"]:
    for feed in ["seq", "conc"]:
        t, o = find(bench="writes", fw="telegraf", scenario=sc, feed=feed), find(bench="writes", fw="typed-session", scenario=sc, feed=feed)
        if not (t and o):
            continue
        ratio = t["bytes_written_per_update"] / o["bytes_written_per_update"] if o["bytes_written_per_update"] else None
        print(f"| {sc} | {feed} | {t['sets_per_update']} | {o['sets_per_update']} | {t['bytes_written_per_update']} | {o['bytes_written_per_update']} | {fmt(ratio, 1) if ratio else ('0 written' if not o['bytes_written_per_update'] else '–')} |")

print("\n### D. Persistent stores, full middleware, sequential (20,000 updates, 1,000 users)\n")
print("| store | upd/s | µs/upd | loads/upd | writes/upd | lost | vs @telegraf/session SQLite (same journal) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("fw") != "typed-session" or r.get("bench") not in ("sqlite", "store") or r.get("workload", "seq") != "seq":
        continue
    journal = (r.get("journal") or "").removesuffix("-group-commit").removesuffix("-single-commit")
    anchor = find(bench="sqlite", fw="telegraf", journal=journal) if journal else None
    ratio = f"{r['median_ups'] / anchor['median_ups']:.1f}× (target ≥ 5 for wal-normal)" if anchor else "–"
    print(f"| {r['store']} {r.get('journal', '')} | {r['median_ups']:,.0f} | {r['us_per_update']} | {r['loads_per_update']} | {r['writes_per_update']} | {r['lost_updates']} | {ratio} |")

print("\n### E. Server stores: Telegraf, the raw driver, typed-session (20,000 updates, 1,000 users)\n")
print("| store | feed | Telegraf upd/s (lost) | raw driver upd/s (lost) | typed-session upd/s (lost) | round trips/upd | cached upd/s (lost) | cached round trips/upd | ours ÷ Telegraf (checked / cached) | raw ÷ ours (checked / cached) |")
print("|---|---|---|---|---|---|---|---|---|---|")
anchor_names = {"postgres": "pg", "mysql": "mysql", "redis": "redis"}
for store in ["redis", "redis-cluster", "postgres", "mysql", "sqlite-wal", "sqlite-wal-single", "sqlite-wal-full"]:
    for wl in ["seq", "window"]:
        ours = find(fw="typed-session", store=store, workload=wl, freshness="checked")
        cached = find(fw="typed-session", store=store, workload=wl, freshness="cached")
        if not ours:
            continue
        # The raw row runs synchronous=NORMAL: no raw row to set beside FULL.
        raw = None if store.endswith("-full") else find(fw="raw-driver", store=store.removesuffix("-single"), workload=wl)
        name = anchor_names.get(store)
        tele = find(bench="server-store", fw="telegraf", store=f"@telegraf/session/{name}", workload=wl) if name else None
        cell = lambda r: f"{r['median_ups']:,.0f} ({r['lost_updates']})" if r else "–"
        trips = lambda r: f"{r['loads_per_update'] + r['writes_per_update']:.2f}" if r else "–"
        pair = lambda f: " / ".join(f(r) for r in (ours, cached) if r)
        versus = pair(lambda r: f"{r['median_ups'] / tele['median_ups']:.1f}") if tele else "–"
        limit = pair(lambda r: f"{raw['median_ups'] / r['median_ups']:.2f}") if raw else "–"
        feed = "seq" if wl == "seq" else f"{ours.get('width', 100)} in flight"
        print(f"| {store} | {feed} | {cell(tele)} | {cell(raw)} | {cell(ours)} | {trips(ours)} | {cell(cached)} | {trips(cached)} | {versus} | {limit} |")

allocs = find(bench="allocs")
if allocs:
    per = allocs["allocations_per_update"]
    print(f"\nAllocations per update (memory store, seq): baseline {per['baseline']}, session {per['session']}")
