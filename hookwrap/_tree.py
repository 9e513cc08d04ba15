"""Tree specs that a file may carry: tuple, list, dict, namedtuple-as-fields and leaf.

A captured hook takes and returns nested Python structures (``(args, output)``,
``(args, kwargs)``...). Their shape is stored in a manifest, so reading it back must never
resolve a module or a class by name, as ``torch.utils._pytree.treespec_loads`` does (a
``defaultdict`` spec imports its factory's module). This module flattens and rebuilds
the few containers hooks use, and parses their JSON from an allowlist.

JSON form (a *node*)::

    null                                    a leaf
    {"tuple": [node, ...]}                  a tuple
    {"list": [node, ...]}                   a list
    {"dict": [[key, node], ...]}            a dict; keys are str or int, in order
    {"namedtuple": [field, ...], "items": [node, ...]}
                                            a namedtuple, recorded by its field names and
                                            rebuilt as a plain tuple (or as the live
                                            value's own type, see :func:`unflatten`)

Limits: :data:`MAX_DEPTH` levels and :data:`MAX_NODES` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Spec", "TreeError", "flatten", "unflatten", "parse", "leaf_paths", "MAX_DEPTH", "MAX_NODES"]

MAX_DEPTH = 32
MAX_NODES = 10_000


class TreeError(ValueError):
    """A value cannot be described by a tree spec, or stored JSON is not a valid spec."""


@dataclass(frozen=True)
class Spec:
    """An immutable tree spec. ``kind`` is ``leaf``, ``tuple``, ``list``, ``dict`` or
    ``namedtuple``; ``keys`` holds dict keys or namedtuple fields."""

    kind: str
    children: tuple[Spec, ...] = ()
    keys: tuple[Any, ...] = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def to_json(self) -> Any:
        if self.kind == "leaf":
            return None
        items = [c.to_json() for c in self.children]
        if self.kind == "dict":
            return {"dict": [[k, v] for k, v in zip(self.keys, items)]}
        if self.kind == "namedtuple":
            return {"namedtuple": list(self.keys), "items": items}
        return {self.kind: items}

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        inner = ", ".join(
            f"{k!r}: {c}" if self.kind == "dict" else (f"{k}={c}" if self.kind == "namedtuple" else str(c))
            for k, c in zip(self.keys or (None,) * len(self.children), self.children)
        )
        return {"tuple": f"({inner})", "list": f"[{inner}]", "dict": f"{{{inner}}}"}.get(
            self.kind, f"namedtuple({inner})")


LEAF = Spec("leaf")


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and isinstance(getattr(type(value), "_fields", None), tuple)


def _fields_of(value: Any) -> tuple[str, ...]:
    cls: Any = type(value)
    return tuple(cls._fields)


def flatten(value: Any, *, _depth: int = 0) -> tuple[list[Any], Spec]:
    """Leaves (in order) and the spec of ``value``.

    Tuples, namedtuples, lists and dicts with str or int keys are containers; anything
    else is a leaf. Subclasses of list and dict are refused: they could not be rebuilt.

    Raises:
        TreeError: the structure is too deep, or a container cannot be described.
    """
    if _depth > MAX_DEPTH:
        raise TreeError(f"the structure is nested deeper than {MAX_DEPTH} levels")
    leaves: list[Any] = []
    children: list[Spec] = []
    if isinstance(value, tuple):
        for item in value:
            sub, spec = flatten(item, _depth=_depth + 1)
            leaves += sub
            children.append(spec)
        if _is_namedtuple(value):
            return leaves, Spec("namedtuple", tuple(children), _fields_of(value))
        if type(value) is not tuple:
            raise TreeError(f"a {type(value).__name__} (a tuple subclass) cannot be stored")
        return leaves, Spec("tuple", tuple(children))
    if isinstance(value, list):
        if type(value) is not list:
            raise TreeError(f"a {type(value).__name__} (a list subclass) cannot be stored")
        for item in value:
            sub, spec = flatten(item, _depth=_depth + 1)
            leaves += sub
            children.append(spec)
        return leaves, Spec("list", tuple(children))
    if isinstance(value, dict):
        if type(value) is not dict:
            raise TreeError(f"a {type(value).__name__} (a dict subclass) cannot be stored")
        keys = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TreeError(f"a dict key {key!r} is not a str or an int")
            sub, spec = flatten(item, _depth=_depth + 1)
            leaves += sub
            children.append(spec)
            keys.append(key)
        return leaves, Spec("dict", tuple(children), tuple(keys))
    return [value], LEAF


def unflatten(leaves: list[Any], spec: Spec, *, like: Any = None) -> Any:
    """Rebuild a structure from ``leaves``.

    A namedtuple node becomes a plain tuple, unless ``like`` (the live value at the same
    place, for example the output a hook received) is a namedtuple with the same fields:
    then it gets ``like``'s type. No type is ever looked up by name.
    """
    it = iter(leaves)
    result = _build(it, spec, like)
    if next(it, _END) is not _END:
        raise TreeError("more leaves than the spec has places")
    return result


_END = object()


def _build(it: Any, spec: Spec, like: Any) -> Any:
    if spec.kind == "leaf":
        value = next(it, _END)
        if value is _END:
            raise TreeError("fewer leaves than the spec has places")
        return value
    likes: list[Any] = [None] * len(spec.children)
    if spec.kind in ("tuple", "list", "namedtuple") and isinstance(like, (tuple, list)) \
            and len(like) == len(spec.children):
        likes = list(like)
    elif spec.kind == "dict" and isinstance(like, dict):
        likes = [like.get(k) for k in spec.keys]
    items = [_build(it, child, sub) for child, sub in zip(spec.children, likes)]
    if spec.kind == "list":
        return items
    if spec.kind == "dict":
        return dict(zip(spec.keys, items))
    if spec.kind == "namedtuple" and _is_namedtuple(like) and _fields_of(like) == spec.keys:
        cls: Any = type(like)
        return cls._make(items)
    return tuple(items)


def leaf_paths(spec: Spec, names: tuple[str, ...] = ()) -> list[str]:
    """A readable path for every leaf of ``spec``, in order: ``output``, ``args[0]``,
    ``kwargs['hidden_states']``. ``names`` name the children of the top node (for a hook's
    ``(args, output)``); without them the top node is ``input``."""

    def walk(node: Spec, prefix: str) -> list[str]:
        if node.kind == "leaf":
            return [prefix]
        out: list[str] = []
        keys = node.keys if node.kind in ("dict", "namedtuple") else range(len(node.children))
        for key, child in zip(keys, node.children):
            out += walk(child, f"{prefix}.{key}" if node.kind == "namedtuple" else f"{prefix}[{key!r}]")
        return out

    if names and spec.kind in ("tuple", "list") and len(names) == len(spec.children):
        return [p for name, child in zip(names, spec.children) for p in walk(child, name)]
    return walk(spec, "input")


def parse(data: Any) -> Spec:
    """A :class:`Spec` from its JSON form, checked against the allowlist and the limits.

    Raises:
        TreeError: the data is not a valid spec.
    """
    count = [0]
    return _parse(data, 0, count)


def _parse(data: Any, depth: int, count: list[int]) -> Spec:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise TreeError(f"the spec has more than {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise TreeError(f"the spec is nested deeper than {MAX_DEPTH} levels")
    if data is None:
        return LEAF
    if not isinstance(data, dict):
        raise TreeError(f"a spec node must be null or an object, got {type(data).__name__}")
    if len(data) == 1 and next(iter(data)) in ("tuple", "list"):
        (kind, items), = data.items()
        if not isinstance(items, list):
            raise TreeError(f"'{kind}' must hold a list")
        return Spec(kind, tuple(_parse(i, depth + 1, count) for i in items))
    if set(data) == {"dict"}:
        pairs = data["dict"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise TreeError("'dict' must hold a list of [key, node] pairs")
        keys = tuple(p[0] for p in pairs)
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys) or len(set(keys)) != len(keys):
            raise TreeError("dict keys must be distinct strings or integers")
        return Spec("dict", tuple(_parse(p[1], depth + 1, count) for p in pairs), keys)
    if set(data) == {"namedtuple", "items"}:
        fields, items = data["namedtuple"], data["items"]
        if not isinstance(fields, list) or not isinstance(items, list) or len(fields) != len(items) \
                or not all(isinstance(f, str) and f.isidentifier() for f in fields) or len(set(fields)) != len(fields):
            raise TreeError("'namedtuple' must list distinct field names, one per item")
        return Spec("namedtuple", tuple(_parse(i, depth + 1, count) for i in items), tuple(fields))
    raise TreeError(f"unknown spec node {sorted(data)!r}: only tuple, list, dict, namedtuple and leaf are allowed")
