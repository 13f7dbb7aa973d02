"""YAML loading with bounds: the one way proctor reads YAML it did not write itself.

``yaml.safe_load`` is safe against code execution, not against size. Anchors and aliases let a
632-byte document describe billions of values (each level refers to the previous one nine
times); ``safe_load`` builds it cheaply as shared references, and it explodes only later, when the
data is copied, dumped or validated, which on the server means inside a job. Nesting is the other
edge: PyYAML composes recursively, so a few thousand ``[`` end in a ``RecursionError`` (a 500 on
the server). Here both are checked on the composed node graph, before any Python object is built:
nesting past ``max_depth`` and documents whose aliases would expand past ``max_nodes`` values are
refused with a ``YAMLLimitError``, a ``yaml.YAMLError``, so every caller's existing handling of bad
YAML reports it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64
"""Nesting levels a document may have (a task spec needs fewer than ten)."""
MAX_NODES = 100_000
"""Values a document may hold once every alias is expanded (a large spec has a few thousand)."""


class YAMLLimitError(yaml.YAMLError):
    """The document is too deep, or its aliases expand too far: refused before it is built."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None

    def __str__(self) -> str:
        return self.problem


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts depth while composing and expanded size before constructing."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YAMLLimitError(f"YAML nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, self.max_nodes)
        return self.construct_document(node)


def _expanded_size(root: Node, limit: int) -> int:
    """Values under ``root`` with every alias expanded, computed once per distinct node.

    Aliases are the same node object reached twice, so memoizing by identity makes this linear in
    the document's text while the count it returns is what building and copying it would cost.
    A node that contains itself (``&a [*a]``) would be infinite and is refused too.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in open_nodes:
            raise YAMLLimitError("YAML alias refers to a value that contains it (a recursive alias)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        open_nodes.discard(key)
        if total > limit:
            raise YAMLLimitError(f"YAML aliases expand to more than {limit:,} values (an alias bomb?)")
        sizes[key] = total
        return total

    return size(root)


def safe_load(text: str | bytes) -> Any:
    """``yaml.safe_load`` with proctor's depth and expansion bounds (``YAMLLimitError`` past them)."""
    loader = _BoundedLoader(text if isinstance(text, str) else text.decode("utf-8"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
