"""JSON paths: which fields of a JSON value a masking rule names, compiled once.

The subset of JSONPath a policy may write:

    $                 the whole value
    $.card.number     a member (names of letters, digits, `_` and `-`, not starting with a digit or `-`)
    $['card no']      a member with any name (single or double quotes; `\\'` and `\\\\` escape)
    $.items[0]        an array element (a negative index counts from the end)
    $.items[*].pan    every element of an array (or every member of an object); `.*` is the same
    $..email          `email` members at any depth

`JsonPath.parse` raises `PathError` with what was wrong and where;
`JsonPath.apply(doc, replace)` calls `replace(value)` for every value the path
selects in a parsed document and writes the result back in place, or deletes
the member or element when it returns `REMOVE`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REMOVE = object()  # what `replace` returns to delete the selected member or element

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")


class PathError(ValueError):
    """A JSON path that cannot be used; the message says what to write instead."""


# Steps: ("key", name), ("index", n), ("all",), ("deep", name)
Step = tuple


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not isinstance(text, str) or not text.startswith("$"):
            raise PathError(f"{text!r} does not start with '$': write e.g. '$.card.number' or '$.items[*].pan'")
        steps: list[Step] = []
        i = 1
        while i < len(text):
            rest = text[i:]
            if rest.startswith(".."):
                m = _NAME.match(text, i + 2)
                if not m:
                    raise PathError(f"{text!r}: '..' at character {i + 1} must be followed by a member name, "
                                    f"e.g. '$..email'")
                steps.append(("deep", m.group()))
                i = m.end()
            elif rest.startswith(".*"):
                steps.append(("all",))
                i += 2
            elif rest.startswith("."):
                m = _NAME.match(text, i + 1)
                if not m:
                    raise PathError(f"{text!r}: '.' at character {i + 1} must be followed by a member name "
                                    f"(letters, digits, '_', '-'); write other names as ['name']")
                steps.append(("key", m.group()))
                i = m.end()
            elif rest.startswith("[*]"):
                steps.append(("all",))
                i += 3
            elif (m := _INDEX.match(text, i)):
                steps.append(("index", int(m.group(1))))
                i = m.end()
            elif (m := _QUOTED.match(text, i)):
                raw = m.group(1) if m.group(1) is not None else m.group(2)
                steps.append(("key", re.sub(r"\\(.)", r"\1", raw)))
                i = m.end()
            else:
                raise PathError(f"{text!r}: cannot read {rest!r} (character {i + 1}); use .name, ['name'], [0], "
                                f"[*] or ..name")
        return cls(text, tuple(steps))

    @property
    def is_root(self) -> bool:
        return not self.steps

    def apply(self, doc: Any, replace: Callable[[Any], Any]) -> tuple[Any, int]:
        """(the document, how many values were replaced or removed); the root itself may be replaced."""
        if not self.steps:
            new = replace(doc)
            return (doc, 0) if new is doc else (new, 1)
        return doc, _walk(doc, self.steps, 0, replace)

    def __str__(self) -> str:
        return self.text


def _set(container: Any, slot: Any, value: Any, replace: Callable[[Any], Any], removed: list) -> int:
    new = replace(value)
    if new is value:
        return 0
    if new is REMOVE:
        removed.append(slot)
    else:
        container[slot] = new
    return 1


def _drop(container: Any, removed: list) -> None:
    if isinstance(container, list):
        for slot in sorted({s % len(container) for s in removed}, reverse=True):
            del container[slot]
    else:
        for slot in removed:
            container.pop(slot, None)


def _walk(node: Any, steps: tuple[Step, ...], i: int, replace: Callable[[Any], Any]) -> int:
    step = steps[i]
    last = i == len(steps) - 1
    kind = step[0]
    count = 0
    removed: list = []
    if kind == "key":
        if isinstance(node, dict) and step[1] in node:
            if last:
                count += _set(node, step[1], node[step[1]], replace, removed)
            else:
                count += _walk(node[step[1]], steps, i + 1, replace)
    elif kind == "index":
        if isinstance(node, list) and -len(node) <= step[1] < len(node):
            if last:
                count += _set(node, step[1], node[step[1]], replace, removed)
            else:
                count += _walk(node[step[1]], steps, i + 1, replace)
    elif kind == "all":
        slots = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        for slot in slots:
            if last:
                count += _set(node, slot, node[slot], replace, removed)
            else:
                count += _walk(node[slot], steps, i + 1, replace)
    else:  # deep: this node's member, then every descendant's
        name = step[1]
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in list(children):
            if isinstance(child, (dict, list)):
                count += _walk(child, steps, i, replace)
        if isinstance(node, dict) and name in node:
            if last:
                count += _set(node, name, node[name], replace, removed)
            else:
                count += _walk(node[name], steps, i + 1, replace)
    if removed:
        _drop(node, removed)
    return count
