#!/usr/bin/env python3
"""Fails if a dependency in Cargo.lock declares a `rust-version` newer than ours.

`cargo metadata` lists every package of the lock file that the workspace can build, each with
the `rust-version` its manifest declares; ours is the workspace's. Run from the repository.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members and p["rust_version"]}
if len(ours) != 1:
    sys.exit(f"msrv: the workspace members declare {sorted(ours)}; expected one rust-version")
ours = ours.pop()
needs = sorted(
    ((version(p["rust_version"]), p["name"], p["version"]) for p in meta["packages"]
     if p["id"] not in members and p["rust_version"]),
    reverse=True,
)
highest = needs[0] if needs else None
if highest and highest[0] > version(ours):
    too_new = [f"{name} {v} needs {'.'.join(map(str, rv))}" for rv, name, v in needs if rv > version(ours)]
    sys.exit(f"msrv: rust-version {ours} is too low: " + "; ".join(too_new))
print(f"msrv: rust-version {ours}; the highest any dependency needs is "
      f"{'.'.join(map(str, highest[0]))} ({highest[1]} {highest[2]})" if highest else f"msrv: {ours}")
