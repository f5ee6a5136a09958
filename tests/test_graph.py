from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from django.test import SimpleTestCase

from batchadmin.lib.graph import find_cycle

K = TypeVar("K", bound=Hashable)


def is_cycle(path: Sequence[K], edges: Mapping[K, Sequence[K]]) -> bool:
    """``path`` is [a, b, ..., a] and every step follows an edge."""
    return (
        len(path) >= 2
        and path[0] == path[-1]
        and all(b in edges.get(a, []) for a, b in zip(path, path[1:], strict=False))
    )


class FindCycleTestCase(SimpleTestCase):
    def test_it_finds_nothing_in_an_empty_graph(self):
        assert find_cycle({}) is None

    def test_it_finds_nothing_in_a_graph_without_cycles(self):
        # The D365 walkthrough: task -> the tasks it waits for.
        edges = {
            "T1": [],
            "T2": ["T1"],
            "T3": ["T2"],
            "T4": ["T2"],
            "T5": ["T2"],
            "T6": ["T3"],
            "T7": ["T3", "T4"],
        }
        assert find_cycle(edges) is None

    def test_it_finds_nothing_in_a_diamond(self):
        # Two paths to the same parent are not a cycle.
        assert find_cycle({"D": ["B", "C"], "B": ["A"], "C": ["A"], "A": []}) is None

    def test_it_finds_a_self_loop(self):
        assert find_cycle({"T1": ["T1"]}) == ["T1", "T1"]

    def test_it_finds_a_two_task_cycle(self):
        edges = {"T1": ["T2"], "T2": ["T1"]}
        cycle = find_cycle(edges)
        assert cycle is not None
        assert is_cycle(cycle, edges)
        assert sorted(cycle[:-1]) == ["T1", "T2"]

    def test_it_returns_only_the_cycle_not_the_path_leading_to_it(self):
        edges = {"A": ["B"], "B": ["C"], "C": ["D"], "D": ["B"]}
        cycle = find_cycle(edges)
        assert cycle is not None
        assert is_cycle(cycle, edges)
        assert sorted(cycle[:-1]) == ["B", "C", "D"]

    def test_it_finds_a_cycle_in_a_later_component(self):
        edges = {"A": [], "B": ["A"], "X": ["Y"], "Y": ["Z"], "Z": ["X"]}
        cycle = find_cycle(edges)
        assert cycle is not None
        assert is_cycle(cycle, edges)

    def test_it_accepts_parents_that_are_not_keys(self):
        assert find_cycle({"T2": ["T1"]}) is None

    def test_it_works_with_any_hashable_node(self):
        edges = {1: [2], 2: [3], 3: [1]}
        cycle = find_cycle(edges)
        assert cycle is not None
        assert is_cycle(cycle, edges)
        assert sorted(cycle[:-1]) == [1, 2, 3]

    def test_it_walks_a_long_chain_without_recursion(self):
        n = 10_000
        edges = {i: [i - 1] if i else [] for i in range(n)}
        assert find_cycle(edges) is None
        edges[0] = [n - 1]  # close the chain
        cycle = find_cycle(edges)
        assert cycle is not None
        assert len(cycle) == n + 1
        assert is_cycle(cycle, edges)

    def test_it_walks_a_long_chain_listed_backwards(self):
        n = 10_000
        edges = {i: [i + 1] for i in reversed(range(n))}
        assert find_cycle(edges) is None
