#!/usr/bin/env python3
"""Draws the comparison run's bar charts as SVG files (no dependencies): the JSON lines of
scripts/compare-anchors.sh in, one chart per question out.

usage: charts.py RESULTS.jsonl OUT_DIR

  memory.svg   updates a second on the memory store, Telegraf against typed-session
  servers.svg  updates a second on Redis, PostgreSQL and MariaDB, one at a time and 100 in
               flight: Telegraf, the raw driver, typed-session (checked and cached), with the
               increments each lost
  sqlite.svg   updates a second on SQLite in WAL mode: the raw driver and typed-session

A chart whose rows are all missing from the run is not written; a missing row is left out.
"""
import html
import pathlib
import sys

from results import finder, load

COLORS = {
    "Telegraf": "#9e9e9e",
    "raw driver": "#c7b299",
    "typed-session": "#2f6db5",
    "typed-session, cached": "#7fb0e6",
}


def bar_chart(title, groups, unit):
    """groups: [(group label, [(series, value, note)])] -> SVG text (horizontal bars, each group
    scaled to its longest bar)."""
    groups = [(label, bars) for label, bars in groups if bars]
    if not groups:
        return None
    left, width, bar, gap = 190, 430, 16, 14
    y = 44
    body = []
    for label, bars in groups:
        # Each group on its own scale: its bars compare with each other, not across groups.
        top = max(value for _, value, _ in bars)
        body.append(f'<text x="8" y="{y + 12}" font-weight="bold">{html.escape(label)}</text>')
        y += 18
        for series, value, note in bars:
            length = max(1.0, width * value / top)
            body.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end">{html.escape(series)}</text>')
            body.append(
                f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{COLORS.get(series, "#555")}"/>'
            )
            text = f"{value:,.0f}" + (f" ({note})" if note else "")
            body.append(f'<text x="{left + length + 5:.1f}" y="{y + bar - 4}">{html.escape(text)}</text>')
            y += bar + 4
        y += gap
    height = y + 24
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 170}" height="{height}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="8" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>'
        f'<text x="{left}" y="{height - 8}" fill="#555">{html.escape(unit)}</text>'
    )
    return head + "".join(body) + "</svg>\n"


def lost(row):
    n = row.get("lost_updates")
    return f"{n:,} lost" if n else None


def memory(find):
    groups = []
    for workload, label in [("seq", "one update at a time"), ("conc", "batches of 1,000")]:
        bars = []
        telegraf = find(bench="throughput", fw="telegraf", workload=workload, variant="session")
        ours = find(bench="throughput", fw="typed-session", workload=workload, variant="session", runtime="current-thread")
        if telegraf:
            bars.append(("Telegraf", telegraf["median_ups"], None))
        if ours:
            bars.append(("typed-session", ours["median_ups"], None))
        groups.append((label, bars))
    return bar_chart("Memory store: updates a second (higher is better)", groups, "updates a second, median")


def servers(find):
    anchors = {"redis": "redis", "postgres": "pg", "mysql": "mysql"}
    names = {"redis": "Redis", "postgres": "PostgreSQL", "mysql": "MariaDB"}
    groups = []
    for store in ["redis", "postgres", "mysql"]:
        for workload, feed in [("seq", "one at a time"), ("window", "100 in flight")]:
            bars = []
            telegraf = find(bench="server-store", fw="telegraf", store=f"@telegraf/session/{anchors[store]}", workload=workload)
            raw = find(fw="raw-driver", store=store, workload=workload)
            ours = find(fw="typed-session", store=store, workload=workload, freshness="checked")
            cached = find(fw="typed-session", store=store, workload=workload, freshness="cached")
            for series, row in [("Telegraf", telegraf), ("raw driver", raw), ("typed-session", ours), ("typed-session, cached", cached)]:
                if row:
                    bars.append((series, row["median_ups"], lost(row)))
            groups.append((f"{names[store]}, {feed}", bars))
    return bar_chart(
        "Server stores: updates a second, and increments lost (higher is better, none lost is right)",
        groups,
        "updates a second, median; 20,000 updates over 1,000 users; each group on its own scale",
    )


def sqlite(find):
    groups = []
    for workload, feed in [("seq", "one at a time"), ("window", "100 in flight")]:
        bars = []
        raw = find(fw="raw-driver", store="sqlite-wal", workload=workload)
        ours = find(fw="typed-session", store="sqlite-wal", workload=workload, freshness="checked")
        cached = find(fw="typed-session", store="sqlite-wal", workload=workload, freshness="cached")
        for series, row in [("raw driver", raw), ("typed-session", ours), ("typed-session, cached", cached)]:
            if row:
                bars.append((series, row["median_ups"], lost(row)))
        groups.append((f"SQLite WAL, {feed}", bars))
    return bar_chart("SQLite file: updates a second (higher is better)", groups, "updates a second, median")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    find = finder(load(sys.argv[1]))
    out = pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in [("memory", memory), ("servers", servers), ("sqlite", sqlite)]:
        svg = draw(find)
        if svg:
            (out / f"{name}.svg").write_text(svg)
            print(f"charts: {out / (name + '.svg')}")


main()
