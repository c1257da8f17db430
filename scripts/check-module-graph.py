#!/usr/bin/env python3
"""Fails if the runtime's modules import each other in a loop.

Reads every `use crate::...`, `use super::...`, `use self::...` and `use child::...` line of
session-runtime/src, and every path written inline in code (`crate::store::Foo::new()`,
`super::Bar`; not in comments), maps each to the module it names (the longest module path
that is a prefix of it, followed through a parent's re-export of a child's item), and looks
for a cycle in that graph. A parent's `pub use` of its own children is a namespace, not a
dependency. A private child module (`mod group;`, no `pub`) that holds `impl` blocks of a type its
parent defines is that type split into files: nothing outside can name it, so it counts as its
parent. Prints the layers, lowest first.

usage: check-module-graph.py [SRC]   (default: session-runtime/src)
"""
import pathlib
import re
import sys

ROOT = (
    pathlib.Path(sys.argv[1]).resolve()
    if len(sys.argv) > 1
    else pathlib.Path(__file__).resolve().parent.parent / "session-runtime" / "src"
)


def module_of(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


modules = {module_of(p): p for p in ROOT.rglob("*.rs")}

PRIVATE_MOD = re.compile(r"^\s*mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
TYPE_DEF = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:struct|enum)\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
IMPL = re.compile(r"^\s*impl\b([^{;]*)\{", re.M)


def self_types(text):
    """The type each `impl` block of `text` is for (`impl<'a> Foo<'a> {`, `impl Tr for Foo {`)."""
    for match in IMPL.finditer(text):
        head = re.sub(r"^\s*<[^>]*>", "", match.group(1))
        head = head.split(" for ", 1)[-1]
        name = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", head)
        if name:
            yield name.group(1)


# Private children that are parts of their parent's type in files of their own: declared
# `mod x;` (no `pub`) by a module other than the crate root, with an `impl` block of a type the
# parent defines.
private = set()
for module, path in modules.items():
    if not module:
        continue  # the crate root's modules are the rooms
    text = path.read_text()
    own = set(TYPE_DEF.findall(text))
    for name in PRIVATE_MOD.findall(text):
        child = module + (name,)
        if child in modules and own & set(self_types(modules[child].read_text())):
            private.add(child)


def room(module):
    """The module a module counts as: itself, or for a private child, its parent's room."""
    while module in private:
        module = module[:-1]
    return module


def target(importer, path):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] == "self":
        base, rest = importer, parts[1:]
    elif parts[0] == "super":
        base, rest = importer[:-1], parts[1:]
    elif importer + (parts[0],) in modules:
        base, rest = importer, parts  # a child module, named without `self::`
    else:
        return None  # another crate
    full = base + tuple(rest)
    for n in range(len(full), -1, -1):
        if full[:n] in modules:
            return full[:n]
    return None


USE = re.compile(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M)


def imports(text):
    """(is `pub use`, path) for each path a `use` names, braces expanded one level. Unit
    tests (an inline `#[cfg(test)] mod tests`, at the end of a file) are not part of the graph."""
    text = re.split(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, flags=re.M)[0]
    for match in USE.finditer(text):
        spec = re.sub(r"\s+", "", match.group(2))
        brace = re.match(r"^(.*?)::\{(.*)\}$", spec)
        heads = [spec]
        if brace:
            heads = [brace.group(1) + "::" + item for item in brace.group(2).split(",") if item]
        for head in heads:
            yield bool(match.group(1)), re.sub(r"::self$", "", head.split(" as ")[0])


INLINE = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
COMMENT = re.compile(r"//.*$", re.M)
STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def inline_paths(text):
    """Paths named in code outside `use` lines: comments (doc links too) and string literals
    are left out; so are unit tests, as for `imports`."""
    text = re.split(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, flags=re.M)[0]
    text = USE.sub("", COMMENT.sub("", STRING.sub('""', text)))
    for match in INLINE.finditer(text):
        yield match.group(1)


# Names a module re-exports from its own descendants: name -> the descendant.
reexports = {m: {} for m in modules}
for module, path in modules.items():
    for public, head in imports(path.read_text()):
        to = target(module, head)
        if public and to and to[: len(module)] == module and to != module:
            reexports[module][head.split("::")[-1]] = to

edges = {m: set() for m in modules}
for module, path in modules.items():
    for public, head in imports(path.read_text()):
        to = target(module, head)
        if to is None or to == module or to == ():
            continue
        if public and to[: len(module)] == module:
            continue  # a namespace re-exporting its children
        to = reexports[to].get(head.split("::")[-1], to)
        edges[module].add(to)
    for head in inline_paths(path.read_text()):
        to = target(module, head)
        if to is None or to == module or to == ():
            continue
        # `crate::store::Foo::new`: the item may be followed by its own path segments.
        parts = head.split("::")
        names = [p for p in parts if p not in ("crate", "super")]
        item = next((n for n in names if n[:1].isupper()), names[-1] if names else "")
        edges[module].add(reexports[to].get(item, to))

# Collapse private children into their parents.
collapsed = {}
for module, targets in edges.items():
    here = room(module)
    collapsed.setdefault(here, set())
    collapsed[here] |= {room(t) for t in targets if room(t) != here}
edges = collapsed

state, stack = {}, []


def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(edges[node]):
        if state.get(nxt) == 1:
            cycle = stack[stack.index(nxt):] + [nxt]
            sys.exit("module loop: " + " -> ".join("::".join(m) or "crate" for m in cycle))
        if nxt not in state:
            visit(nxt)
    stack.pop()
    state[node] = 2


for node in sorted(edges):
    if node not in state:
        visit(node)

depth = {}


def level(node):
    if node not in depth:
        depth[node] = 1 + max((level(n) for n in edges[node]), default=-1)
    return depth[node]


layers = {}
for node in edges:
    layers.setdefault(level(node), []).append("::".join(node) or "crate")
print("module graph: no loop; layers, lowest first:")
for n in sorted(layers):
    print(f"  {n}: " + ", ".join(sorted(layers[n])))
