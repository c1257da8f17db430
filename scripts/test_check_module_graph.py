#!/usr/bin/env python3
"""Tests of check-module-graph.py: a loop made by a path written inline in code fails it, the
same path in a comment or a string does not, `use` lines are read as before, and a type split
into private child files is one module while any other child that names its parent back is a
loop."""
import pathlib
import subprocess
import sys
import tempfile

SCRIPT = pathlib.Path(__file__).resolve().parent / "check-module-graph.py"


def check(files):
    with tempfile.TemporaryDirectory() as root:
        for name, text in files.items():
            path = pathlib.Path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        run = subprocess.run([sys.executable, SCRIPT, root], capture_output=True, text=True)
        return run.returncode, run.stdout + run.stderr


LIB = "mod a;\nmod b;\n"
A = "use crate::b::Thing;\npub fn helper() {}\n"
cases = [
    ("an inline back-reference is a loop", {"b.rs": "pub struct Thing;\npub fn f() { crate::a::helper(); }\n"}, 1),
    ("an inline `super::` back-reference is a loop", {"b.rs": "pub struct Thing;\npub fn f() { super::a::helper(); }\n"}, 1),
    ("a `use` back-reference is a loop", {"b.rs": "use crate::a::helper;\npub struct Thing;\n"}, 1),
    ("in a comment it is not", {"b.rs": "pub struct Thing;\n// calls crate::a::helper()\n/// [`x`](crate::a::helper)\npub fn f() {}\n"}, 0),
    ("in a string it is not", {"b.rs": 'pub struct Thing;\npub const S: &str = "crate::a::helper";\n'}, 0),
]
# A type split into files: `b` defines `Store` and uses its private child `part`, whose `impl
# Store` block names `super::Store`; a child that does not implement a type of `b` is a room.
SPLIT = "mod part;\nuse part::helper;\npub struct Store;\n"
cases += [
    ("a private child implementing its parent's type is part of it",
     {"b.rs": SPLIT, "b/part.rs": "use super::Store;\nimpl Store { pub(super) fn run(&self) {} }\npub(super) fn helper() {}\n"}, 0),
    ("a private child that only names its parent back is a loop",
     {"b.rs": SPLIT, "b/part.rs": "use super::Store;\npub(super) fn helper(_: &Store) {}\n"}, 1),
]
failed = 0
for name, files, expected in cases:
    code, out = check({"lib.rs": LIB, "a.rs": A, **files})
    if (code != 0) != bool(expected):
        failed += 1
        print(f"FAIL {name}: exit {code}\n{out}")
    else:
        print(f"ok   {name}")
sys.exit(1 if failed else 0)
