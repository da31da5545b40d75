from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch

from fastes.tree import ravel, raveler

Pair = namedtuple("Pair", "a b")


def _trees():
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(dtype)
    return {
        "dict": {"w": r(3, 4), "b": r(4)},
        "nested": {"enc": [r(2, 2), (r(5), Pair(r(1), r(2, 1, 3)))], "dec": OrderedDict(x=r(7))},
        "namedtuple": Pair(r(3), {"z": r(())}),
        "tensor": r(11),
        "module": dict(
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).named_parameters()
        ),
    }


def _assert_same(a, b):
    from torch.utils._pytree import tree_flatten

    la, sa = tree_flatten(a)
    lb, sb = tree_flatten(b)
    assert sa == sb
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", list(_trees()))
def test_round_trip_keeps_structure_shapes_and_values(name):
    tree = _trees()[name]
    flat, unravel = ravel(tree)
    assert flat.dim() == 1 and flat.dtype == torch.float32
    _assert_same(unravel(flat), tree)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_round_trip_is_bit_exact_for_every_float_dtype(dtype):
    tree = {"a": torch.randn(5, 3).to(dtype), "b": [torch.randn(4).to(dtype)]}
    flat, unravel = ravel(tree)
    # fp16/bf16 widen exactly into float32; float64 keeps a float64 flat vector.
    assert flat.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _assert_same(unravel(flat), tree)


def test_mixed_dtypes_and_batched_unravel():
    tree = {"h": torch.randn(2, 3).half(), "f": torch.randn(4)}
    r = raveler(tree)
    assert r.dim == 10 and r.flat_dtype == torch.float32
    batch = torch.stack([r.ravel(tree), 2 * r.ravel(tree)])  # (2, D)
    out = r.unravel_batch(batch)
    assert out["h"].shape == (2, 2, 3) and out["h"].dtype == torch.float16
    assert torch.equal(out["f"][1], (2 * tree["f"]))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="params must be a non-empty pytree"):
        raveler({})
    with pytest.raises(TypeError, match=r"params\['n'\] must be a floating-point tensor.*int64"):
        raveler({"w": torch.ones(2), "n": torch.ones(2, dtype=torch.int64)})
    with pytest.raises(TypeError, match=r"params\['x'\] must be a torch.Tensor; got float"):
        raveler({"x": 1.0})
    with pytest.raises(ValueError, match="must be on one device.*meta"):
        raveler({"a": torch.ones(2), "b": torch.ones(2, device="meta")})


def test_host_view_only_for_small_eager_cpu_tensors_and_back_without_a_copy():
    # host_view hands small eager CPU tensors to numpy as views (a generation's weights, a
    # small problem's D numbers); large ones stay torch's (multi-threaded above HOST_MAX), as
    # do tensors that need grad. from_host wraps the array back without copying it.
    from fastes.tree import HOST_MAX, from_host, host_view

    small = torch.arange(6.0)
    v = host_view(small)
    assert isinstance(v, np.ndarray) and np.shares_memory(v, small.numpy())
    back = from_host(v)
    assert back.data_ptr() == small.data_ptr() and from_host(small) is small
    big, grad = torch.zeros(HOST_MAX + 1), torch.zeros(3, requires_grad=True)
    assert host_view(big) is big and host_view(grad) is grad


def test_flat_dicts_unravel_to_the_dict_pytree_would_build():
    # A flat dict of tensors (the usual params) is rebuilt directly from its keys; nested
    # dicts and other containers go through pytree. Either way: the same keys in the same
    # order, the same structure.
    for tree, direct in (
        ({"b": torch.zeros(2), "a": torch.ones(2, 3)}, True),
        ({"a": [torch.zeros(1)]}, False),
        ({"a": {"b": torch.zeros(2)}}, False),
        (OrderedDict(w=torch.zeros(2)), False),
    ):
        r = raveler(tree)
        assert (r.dict_keys is not None) == direct
        out = r.unravel(r.ravel(tree))
        assert type(out) is type(tree) and list(out) == list(tree)
        assert torch.utils._pytree.tree_structure(out) == r.spec
