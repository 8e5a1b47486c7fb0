"""The telemetry catalogue cannot drift from the code: every emitted name is listed, and back.

The scan reads ``foundation/**/*.py`` with :mod:`ast` and takes as an emitted event name:

- a tuple literal of strings starting with ``"foundation"`` (``("foundation", "x", "y")``),
  including ones composed from a module constant (``(*_PREFIX, "y")``, ``_PREFIX + ("y",)``;
  the prefix constant itself is then not a name);
- a string literal shaped like ``"foundation.x.y"`` (three or more identifier segments).

Docstrings, f-strings, strings that name a Foundation module (module paths, logger
names) and the arguments of calls that *consume* names (``attach``,
``detach``, ``list_handlers``, ``getLogger``, …) are not emits; a name passed to ``span``
is a span prefix. ``catalogue.py`` itself is not scanned. A literal the scan mistakes for
an event goes in ``NOT_EVENTS`` below, with the reason.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.telemetry import catalogue, metrics
from foundation.telemetry import poller as poller_module
from foundation.telemetry.catalogue import CATALOGUE, PENDING, default_metrics, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "foundation"
DOCS = ROOT / "docs" / "telemetry.md"

SKIPPED_FILES = {"foundation/telemetry/catalogue.py"}
CONSUMER_CALLS = {
    "attach",
    "detach",
    "list_handlers",
    "getLogger",
    "getChild",
    "import_module",
    "lookup",
}
NOT_EVENTS: dict[str, str] = {
    # "foundation.some.literal": "why it is not an event",
}
_SEGMENT = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Found:
    name: str
    where: str
    span: bool


def _event_tuple(parts: tuple[str, ...] | None) -> bool:
    return (
        parts is not None
        and len(parts) >= 2
        and parts[0] == "foundation"
        and all(_SEGMENT.match(p) for p in parts)
    )


def _event_string(text: str, base: Path) -> bool:
    parts = text.split(".")
    if len(parts) < 3 or parts[0] != "foundation" or not all(_SEGMENT.match(p) for p in parts):
        return False
    # A string naming a Foundation module is a module path or a logger name, not an event.
    module = base.joinpath(*parts)
    return not (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file())


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, tree: ast.Module, base: Path) -> None:
        self.path = path
        self.base = base
        self.found: list[Found] = []
        self.constants: dict[str, tuple[str, ...]] = {}
        self.prefixes: set[str] = set()  # constants used to compose other names
        self.span_constants: set[str] = set()
        self.docstrings: set[int] = set()
        self._stack: list[ast.AST] = []
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                self.docstrings.add(id(body[0].value))
            target = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if isinstance(target, ast.Name):
                parts = self._resolve(value)
                if parts is not None:
                    self.constants[target.id] = parts
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple):
                for elt in node.elts:
                    if isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
                        self.prefixes.add(elt.value.id)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Name):
                        self.prefixes.add(side.id)
            if (
                isinstance(node, ast.Call)
                and _call_name(node) == "span"
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                self.span_constants.add(node.args[0].id)

    def _resolve(self, node: ast.AST) -> tuple[str, ...] | None:
        """The strings a tuple expression spells, or None when it is not static."""
        if isinstance(node, ast.Tuple):
            out: list[str] = []
            for elt in node.elts:
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    out.append(elt.value)
                elif isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
                    prefix = self.constants.get(elt.value.id)
                    if prefix is None:
                        return None
                    out.extend(prefix)
                else:
                    return None
            return tuple(out)
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._resolve(node.left), self._resolve(node.right)
            if left is not None and right is not None:
                return left + right
        return None

    def _consumed(self) -> bool:
        return any(isinstance(n, ast.Call) and _call_name(n) in CONSUMER_CALLS for n in self._stack)

    def _is_span_arg(self, node: ast.AST) -> bool:
        parent = self._stack[-1] if self._stack else None
        return (
            isinstance(parent, ast.Call)
            and _call_name(parent) == "span"
            and bool(parent.args)
            and parent.args[0] is node
        )

    def _assigned_to(self) -> str | None:
        for n in reversed(self._stack):
            if isinstance(n, ast.Assign) and len(n.targets) == 1:
                target = n.targets[0]
                return target.id if isinstance(target, ast.Name) else None
            if isinstance(n, ast.AnnAssign):
                return n.target.id if isinstance(n.target, ast.Name) else None
            if isinstance(n, ast.stmt):
                return None
        return None

    def _add(self, name: str, node: ast.AST) -> None:
        if self._consumed():
            return
        assigned = self._assigned_to()
        if assigned in self.prefixes:
            return
        span = self._is_span_arg(node) or (assigned in self.span_constants)
        self.found.append(Found(name, f"{self.path}:{getattr(node, 'lineno', '?')}", span))

    def generic_visit(self, node: ast.AST) -> None:
        self._stack.append(node)
        super().generic_visit(node)
        self._stack.pop()

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return  # f-strings are dynamic: not checked

    def visit_BinOp(self, node: ast.BinOp) -> None:
        parts = self._resolve(node)
        if parts is not None:
            if _event_tuple(parts):
                self._add(".".join(parts), node)
            return  # its operands are parts of this name, not names
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        parts = self._resolve(node)
        if parts is not None and _event_tuple(parts):
            self._add(".".join(parts), node)
            return
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if (
            isinstance(node.value, str)
            and id(node) not in self.docstrings
            and _event_string(node.value, self.base)
        ):
            self._add(node.value, node)


def scan(root: Path, base: Path) -> list[Found]:
    found: list[Found] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(base).as_posix()
        if rel in SKIPPED_FILES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        scanner = _Scanner(rel, tree, base)
        scanner.visit(tree)
        found.extend(f for f in scanner.found if f.name not in NOT_EVENTS)
    return found


def _by_name(found: list[Found]) -> dict[str, list[Found]]:
    out: dict[str, list[Found]] = {}
    for f in found:
        out.setdefault(f.name, []).append(f)
    return out


# -- the drift test ------------------------------------------------------------------


def test_catalogue_matches_the_code() -> None:
    found = _by_name(scan(SOURCE, ROOT))
    listed = {spec.dotted_name: spec for spec in CATALOGUE}
    pending = {spec.dotted_name: spec for spec in PENDING}
    problems: list[str] = []

    add = sorted(set(found) - set(listed) - set(pending))
    if add:
        problems.append("add to CATALOGUE (emitted in the code, not listed):")
        problems += [f"    {n}   (at {', '.join(f.where for f in found[n])})" for n in add]
    remove = sorted(set(listed) - set(found))
    if remove:
        problems.append("remove from CATALOGUE (listed, no longer emitted anywhere):")
        problems += [f"    {n}" for n in remove]
    landed = sorted(set(pending) & set(found))
    if landed:
        problems.append("move from PENDING to CATALOGUE (the component emits it now):")
        problems += [f"    {n}   (at {found[n][0].where})" for n in landed]
    for name, spec in sorted(pending.items()):
        package = SOURCE / spec.component
        if name not in found and (package.is_dir() or package.with_suffix(".py").exists()):
            problems.append(
                f"PENDING {name}: foundation/{spec.component} exists but does not emit it; "
                "rename it in PENDING and default_metrics() to what the component emits, "
                "or remove it"
            )
    for name, spec in sorted(listed.items()):
        if name in found:
            is_span = any(f.span for f in found[name])
            if is_span != (spec.kind == "span"):
                problems.append(
                    f"set kind={'span' if is_span else 'event'!r} for {name} in CATALOGUE"
                )
    assert not problems, "foundation/telemetry/catalogue.py is out of date:\n" + "\n".join(problems)


def test_catalogue_entries_are_unique_and_complete() -> None:
    names = [spec.dotted_name for spec in (*CATALOGUE, *PENDING)]
    assert len(names) == len(set(names))
    for spec in (*CATALOGUE, *PENDING):
        assert spec.when and spec.component and spec.measurements, spec.dotted_name
        assert catalogue.lookup(spec.name) is spec
        assert catalogue.lookup(spec.dotted_name) is spec
    assert catalogue.lookup("foundation.no.such") is None


def test_default_metrics_cover_catalogued_events_only() -> None:
    defs = default_metrics()
    known = {spec.name: spec for spec in (*CATALOGUE, *PENDING)}
    for m in defs:
        assert m.event_name in known, f"{m.dotted_name}: event not in CATALOGUE or PENDING"
        if isinstance(m.measurement, str) and m.kind != "counter":
            spec = known[m.event_name]
            assert m.measurement in spec.measurements, m.dotted_name
        for tag in m.tags:
            assert tag in known[m.event_name].metadata, f"{m.dotted_name}: tag {tag}"
    # What the issue asks for: store latency, limiter denials, breaker transitions,
    # registry expiries, subscription lag, config changes.
    names = {m.dotted_name for m in defs}
    assert {
        "foundation.events.store.duration",
        "foundation.rate_limiter.deny.count",
        "foundation.circuit_breaker.state_change.count",
        "foundation.registry.expired.count",
        "foundation.events.subscription.lag.lag",
        "foundation.config.changed.count",
    } <= names
    assert len(names) == len(defs)
    seconds = {m.dotted_name: m for m in default_metrics(duration_unit="second")}
    store = seconds["foundation.events.store.duration"]
    assert isinstance(store, metrics.Distribution)
    assert store.unit == "second" and store.buckets[0] == pytest.approx(0.0001)
    no_keys = default_metrics(key_tags=False)
    assert all("key" not in m.tags for m in no_keys)


def test_docs_show_the_current_catalogue() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert markdown_table(CATALOGUE) in text, (
        "docs/telemetry.md: replace the table between the catalogue markers with the output "
        "of `python -m foundation.telemetry.catalogue`"
    )
    if PENDING:
        assert markdown_table(PENDING) in text, (
            "docs/telemetry.md: replace the pending table with markdown_table(PENDING)"
        )


def test_poller_events_are_catalogued() -> None:
    for name in (
        poller_module.MEMORY_EVENT,
        poller_module.EVENT_LOG_EVENT,
        poller_module.SUBSCRIPTION_LAG_EVENT,
        poller_module.CIRCUIT_BREAKERS_EVENT,
    ):
        spec = catalogue.lookup(name)
        assert spec is not None and spec in CATALOGUE


# -- the scanner itself --------------------------------------------------------------

SAMPLE = '''
"""Docstring naming "foundation.doc.only" and ("foundation", "doc", "tuple")."""
import logging

log = logging.getLogger("foundation.sample.logger")
_SET = ("foundation", "sample", "set")
_PREFIX = ("foundation", "breaker")
_SPAN = ("foundation", "sample", "query")
NAME = "foundation.sample.dotted"
MODULE = "foundation.sample"  # two segments: not a name
LOGGER = "foundation.pkg.mod"  # names a module: not an event


def work(tel, name):
    tel.execute(("foundation", "sample", "inline"), {}, {})
    tel.execute((*_PREFIX, "opened"), {}, {})
    tel.execute(_PREFIX + ("closed",), {}, {})
    tel.attach("h", ["foundation.sample.consumed", ("foundation", "sample", "also")], print)
    tel.execute(f"foundation.sample.{name}", {}, {})
    with tel.span(_SPAN):
        pass
    with tel.span("foundation.sample.literal_span"):
        pass
    return "foundation.db"
'''


def test_scanner_finds_emits_and_ignores_the_rest(tmp_path: Path) -> None:
    package = tmp_path / "foundation"
    package.mkdir()
    (package / "sample.py").write_text(SAMPLE)
    (package / "pkg").mkdir()
    (package / "pkg" / "mod.py").write_text("")
    found = {f.name: f for f in scan(package, tmp_path)}
    assert set(found) == {
        "foundation.sample.set",
        "foundation.sample.query",
        "foundation.sample.dotted",
        "foundation.sample.inline",
        "foundation.breaker.opened",
        "foundation.breaker.closed",
        "foundation.sample.literal_span",
    }
    assert found["foundation.sample.query"].span
    assert found["foundation.sample.literal_span"].span
    assert not found["foundation.sample.set"].span
    assert found["foundation.sample.inline"].where == "foundation/sample.py:15"
