"""The JSON lines of scripts/compare-anchors.sh, and finding a row in them: what ratios.py and
charts.py both read."""
import json


def load(path):
    """Every measurement of a run, in order (lines that are not JSON objects are skipped)."""
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def finder(rows):
    """`find(**want)`: the first row whose fields have the wanted values, or None."""

    def find(**want):
        for r in rows:
            # Rows from before `freshness` was recorded are of the default, "checked".
            got = lambda k: r.get(k, "checked" if k == "freshness" else None)
            if all(got(k) == v for k, v in want.items()):
                return r
        return None

    return find
