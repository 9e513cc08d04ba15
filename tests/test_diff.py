"""hookwrap._diff.first_difference: every branch, and convert refusing what it cannot compare."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import hookwrap as hw
from hookwrap._diff import MAX_COMPARE_DEPTH, Difference, first_difference


def equal(a, b) -> bool:
    return first_difference(a, b) is None


def differs(a, b, where: str | None = None) -> Difference:
    found = first_difference(a, b)
    assert found is not None and found.comparable, found
    if where is not None:
        assert found.where == where, found
    return found


def uncomparable(a, b, where: str | None = None) -> Difference:
    found = first_difference(a, b)
    assert found is not None and not found.comparable, found
    if where is not None:
        assert found.where == where, found
    return found


# -- tensors ----------------------------------------------------------------------------


def test_tensors_bit_for_bit_with_nans_in_the_same_places():
    a = torch.tensor([1.0, float("nan"), 3.0])
    assert equal(a, a.clone())
    assert "max |diff|" in differs(a, a + 1e-6 * torch.tensor([0.0, 0.0, 1.0])).what
    assert differs(a, torch.tensor([1.0, 2.0, 3.0])).what == "NaNs in different places (1 values)"
    assert equal(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))  # == semantics, as torch.equal


def test_tensors_shape_dtype_and_integer_values():
    assert "torch.float32[2] against torch.float32[3]" in differs(torch.zeros(2), torch.zeros(3)).what
    assert "torch.float32" in differs(torch.zeros(2), torch.zeros(2, dtype=torch.float64)).what
    assert differs(torch.tensor([1, 2]), torch.tensor([1, 3])).what == "values differ"
    assert differs(torch.zeros(2, dtype=torch.complex64), torch.ones(2, dtype=torch.complex64))


def test_sparse_tensors_are_compared_dense():
    dense = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    assert equal(dense.to_sparse(), dense.to_sparse())
    differs(dense.to_sparse(), (dense * 2).to_sparse())


def test_meta_tensors_cannot_be_compared():
    assert "meta device" in uncomparable(torch.empty(2, device="meta"), torch.empty(2, device="meta")).what


def test_a_tensor_against_something_else():
    assert "a Tensor against a list" in differs(torch.zeros(1), [0.0]).what
    assert "a ndarray against a Tensor" in differs(np.zeros(1), torch.zeros(1)).what


# -- numpy --------------------------------------------------------------------------------


def test_numpy_arrays():
    a = np.array([1.0, np.nan])
    assert equal(a, a.copy())
    differs(a, np.array([1.0, 2.0]))
    differs(np.zeros(2, np.float32), np.zeros(2, np.float64))
    assert equal(np.array(["a", "b"]), np.array(["a", "b"]))
    objects = np.array([object(), object()], dtype=object)
    assert "numpy array of object" in uncomparable(objects, objects.copy()).what


# -- plain values -------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@pytest.mark.parametrize("a, b", [
    (None, None), (1, 1), (1.5, 1.5), (float("nan"), float("nan")), ("x", "x"), (b"x", b"x"),
    (torch.float16, torch.float16), (torch.Size([1, 2]), torch.Size([1, 2])), (Colour.RED, Colour.RED),
    (complex(1, float("nan")), complex(1, float("nan"))), (range(3), range(3)), (slice(1, 2), slice(1, 2)),
])
def test_plain_values_equal(a, b):
    assert equal(a, b)


@pytest.mark.parametrize("a, b", [
    (1, 2), (1.5, float("nan")), ("x", "y"), (True, False), (Colour.RED, Colour.BLUE), (torch.float16, torch.float32),
    (complex(1, float("nan")), complex(2, float("nan"))),
])
def test_plain_values_differ(a, b):
    differs(a, b, "output")


def test_types_must_match():
    assert "a int against a float" in differs(1, 1.0).what
    assert "a tuple against a list" in differs((1,), [1]).what


# -- containers ---------------------------------------------------------------------------


def test_sequences_and_mappings_name_the_path():
    assert equal([torch.ones(2), (1, {"k": "v"})], [torch.ones(2), (1, {"k": "v"})])
    differs([torch.ones(2), (1, {"k": "v"})], [torch.ones(2), (1, {"k": "w"})], "output[1][1]['k']")
    assert "2 items against 3" in differs((1, 2), (1, 2, 3)).what
    assert "keys" in differs({"a": 1, "b": 2}, {"b": 2, "a": 1}).what  # key order is part of a ModelOutput
    differs(OrderedDict(x=torch.zeros(1)), OrderedDict(x=torch.ones(1)), "output['x']")


def test_sets_of_plain_values_and_of_objects():
    assert equal({1, 2}, {2, 1})
    differs(frozenset({1}), frozenset({2}))

    class Thing:
        pass

    same = {Thing()}
    assert equal(same, same)  # the very same set
    assert "set of objects" in uncomparable({Thing()}, {Thing()}).what


@dataclasses.dataclass
class Pair:
    left: torch.Tensor
    right: int


def test_dataclasses_are_compared_field_by_field():
    assert equal(Pair(torch.ones(1), 1), Pair(torch.ones(1), 1))
    differs(Pair(torch.ones(1), 1), Pair(torch.ones(1), 2), "output.right")


class Cache:
    def __init__(self, values):
        self.values = values


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b=None):
        self.a = a
        if b is not None:
            self.b = b


def test_objects_are_compared_through_dict_and_slots():
    assert equal(Cache([torch.ones(2)]), Cache([torch.ones(2)]))
    differs(Cache([torch.ones(2)]), Cache([torch.zeros(2)]), "output.values[0]")
    assert equal(Slotted(1, 2), Slotted(1, 2))
    differs(Slotted(1, 2), Slotted(1, 3), "output.b")
    assert "attributes" in differs(Slotted(1), Slotted(1, 2)).what


def test_a_huggingface_cache_is_compared():
    from transformers import DynamicCache

    a, b = DynamicCache(), DynamicCache()
    for cache, value in ((a, 1.0), (b, 1.0)):
        cache.update(torch.full((1, 2, 3, 4), value), torch.zeros(1, 2, 3, 4), 0)
    assert equal(a, b)
    b.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)
    assert first_difference(a, b) is not None


def test_opaque_values_cannot_be_compared():
    assert "state hookwrap cannot read" in uncomparable(lambda: 1, lambda: 1).what
    assert "cannot read" in uncomparable(functools.partial(print, 1), functools.partial(print, 1)).what
    assert "module" in uncomparable(nn.ReLU(), nn.ReLU()).what
    assert "cannot read" in uncomparable(object(), object()).what
    relu = nn.ReLU()
    assert equal(relu, relu) and equal(print, print)  # the very same object is equal to itself


def test_too_deep_cannot_be_compared_and_says_so():
    def nest(depth):
        value: object = [torch.ones(1)]
        for _ in range(depth):
            value = [value]
        return value

    assert equal(nest(MAX_COMPARE_DEPTH - 2), nest(MAX_COMPARE_DEPTH - 2))
    found = uncomparable(nest(MAX_COMPARE_DEPTH + 3), nest(MAX_COMPARE_DEPTH + 3))
    assert f"deeper than {MAX_COMPARE_DEPTH}" in found.what and found.where.startswith("output[0][0]")


def test_cycles_terminate():
    a: list = [torch.ones(1)]
    a.append(a)
    b: list = [torch.ones(1)]
    b.append(b)
    assert equal(a, b)
    c: list = [torch.zeros(1)]
    c.append(c)
    differs(a, c, "output[0]")


# -- convert refuses what it cannot compare -----------------------------------------------


class Opaque:
    """An output object whose state is in neither __dict__ nor __slots__."""

    __slots__ = ()


class ReturnsOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return {"y": self.proj(x), "extra": Opaque()}


class ReturnsDeep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        value: object = self.proj(x)
        for _ in range(MAX_COMPARE_DEPTH + 2):
            value = (value,)
        return value


@pytest.mark.parametrize("model_type, where", [(ReturnsOpaque, "output['extra']"), (ReturnsDeep, "output[0]")])
def test_convert_refuses_outputs_it_cannot_compare_naming_the_path(model_type, where):
    torch.manual_seed(0)
    model = model_type().eval()
    model.proj.register_forward_hook(hw.hooks.Scale(2.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hw.UnconvertibleHookError) as caught:
        hw.convert(model, (torch.randn(2, 4),))
    message = str(caught.value)
    assert "cannot compare" in message and where in message, message
    # a failed convert leaves the model as it was: still hooked, same weights
    assert len(model.proj._forward_hooks) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
