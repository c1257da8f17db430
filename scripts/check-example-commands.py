#!/usr/bin/env python3
"""Fails if a command in the docs or the scripts runs an example without the features it
requires: every `cargo run`/`cargo build` with `--example NAME` in README.md, the guide, ARCHITECTURE.md,
BENCHMARKS.md, examples/*.rs and scripts/*.sh must name (in `--features`) every feature
Cargo.toml's [[example]] NAME lists in `required-features` (cargo would refuse to run it)."""
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
# Examples Cargo finds on its own (examples/NAME.rs) require nothing unless listed.
required = {p.stem: set() for p in (ROOT / "examples").glob("*.rs")}
required |= {e["name"]: set(e.get("required-features", [])) for e in manifest.get("example", [])}

COMMAND = re.compile(r"cargo\s+(?:run|build)\b[^\n`]*?--example\s+([A-Za-z0-9_]+)[^\n`]*")
FEATURES = re.compile(r"--features[ =]([A-Za-z0-9_,\-]+)")

sources = [ROOT / n for n in ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md")]
sources += sorted((ROOT / "src" / "guide").glob("*.md"))
sources += sorted((ROOT / "examples").glob("*.rs")) + sorted((ROOT / "scripts").glob("*.sh"))
problems, checked = [], 0
for path in sources:
    if not path.exists():
        continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for match in COMMAND.finditer(line):
            name = match.group(1)
            checked += 1
            if name not in required:
                problems.append(f"{path.relative_to(ROOT)}:{number}: no example `{name}`")
                continue
            named = set()
            for features in FEATURES.findall(match.group(0)):
                named |= set(features.split(","))
            if "--all-features" in match.group(0):
                continue
            missing = required[name] - named
            if missing:
                problems.append(
                    f"{path.relative_to(ROOT)}:{number}: `{name}` needs features {sorted(missing)} too"
                )
if problems:
    sys.exit("\n".join(problems))
print(f"example commands: {checked} checked, each names the features its example requires")
