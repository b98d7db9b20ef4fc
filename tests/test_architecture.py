"""Import contracts (DESIGN "Layout"), checked on the real import graph (``grimp``; imports
inside functions and under ``TYPE_CHECKING`` count too):

* domain packages never import ``api``, ``tasks`` or ``cli``;
* ``tasks`` never imports ``api``;
* no import cycle between top-level packages, and none between modules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grimp
import pytest

PACKAGES = (
    "api", "cli", "common", "config", "crawler", "deployments", "diagnostics", "idempotency",
    "inference", "jobs", "monitoring", "plans", "resources", "store", "tasks", "webhooks",
    "workers", "projects", "assistants", "rag", "billing", "alerts", "access",
)  # fmt: skip
DOMAIN = (
    "crawler", "inference", "deployments", "resources", "webhooks", "plans", "idempotency",
    "diagnostics", "jobs", "monitoring", "store", "common", "config", "projects", "assistants",
    "rag", "billing", "alerts", "access",
)  # fmt: skip
ENTRY_POINTS = ("api", "tasks", "cli")
#: Left to the outbox's owner: workers.outbox imports workers.app (to send), and workers.app
#: imports monitoring.jobs -> webhooks.events -> workers.outbox (signal handlers).


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _chains(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    chains = graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)
    return [" -> ".join(chain) for chain in sorted(chains)]


@pytest.mark.parametrize("domain", DOMAIN)
def test_domain_packages_never_import_the_entry_points(
    graph: grimp.ImportGraph, domain: str
) -> None:
    found = [chain for upper in ENTRY_POINTS for chain in _chains(graph, domain, upper)]
    assert not found, "\n".join(found)


def test_tasks_never_import_api(graph: grimp.ImportGraph) -> None:
    found = _chains(graph, "tasks", "api")
    assert not found, "\n".join(found)


def test_no_cycle_between_top_level_packages(graph: grimp.ImportGraph) -> None:
    cycles = [
        f"{a} <-> {b}: {_chains(graph, a, b)[0]} / {_chains(graph, b, a)[0]}"
        for a, b in itertools.combinations(PACKAGES, 2)
        if graph.chain_exists(a, b, as_packages=True) and graph.chain_exists(b, a, as_packages=True)
    ]
    assert not cycles, "\n".join(cycles)


def test_no_cycle_between_modules(graph: grimp.ImportGraph) -> None:
    cycles = [sorted(component) for component in _cycles(graph)]
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def _cycles(graph: grimp.ImportGraph) -> Iterator[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield component


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "a.w")]:
        graph.add_import(importer=importer, imported=imported)
    assert list(_cycles(graph)) == [{"a.x", "a.y", "a.z"}]
