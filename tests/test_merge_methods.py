"""Merge methods against their slow, obviously-correct numpy references (per tensor).

Each method's ``reference`` (``search/merge/methods/<name>.py``, built from the numpy pieces
in ``search/merge/methods/reference.py``) is written from the formula in its module docstring
with plain numpy: selections by explicit sorting and rank indices, the DARE hash with numpy
uint32 arithmetic, sums in float64. Other test files import ``reference_merge`` to check whole
models.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from search.errors import ConfigError
from search.merge.kernels import SortedMagnitudes, dare_hash, merge_tensors
from search.merge.methods import method_info
from search.merge.methods.reference import hash31 as ref_hash31
from search.merge.tensorplan import breadcrumbs_ranks, dare_key
from search.seeding import derive_seed

torch.set_num_threads(1)

METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs"]


def ref_key(seed: int, name: str, expert: int) -> int:
    return derive_seed("dare", seed, name, expert) & 0xFFFFFFFF


def resolve_options(method, params=None):
    return method_info(method).resolve_options(params)


def plan_tensor(method, options, vals, numel, **kw):
    return method_info(method).plan(options, vals, numel, **kw)


def reference_merge(method, base, taus, vals, options=None, *, name="", seed=0) -> np.ndarray:
    """theta for one tensor by the method's numpy reference. base/taus: float32 arrays (taus
    as the engine stores them); vals: per parameter, one value per expert (missing: defaults);
    seed: the trial seed."""
    m = method_info(method)
    K = len(taus)
    v = {p: list(vals.get(p, [d] * K)) for p, d in m.params.items()}
    return m.reference(base, [t.reshape(-1) for t in taus], v, m.resolve_options(options), name=name, seed=seed)


def assert_close_ref(got: torch.Tensor, ref: np.ndarray, what: str = "") -> None:
    """float32 engine vs float64 reference: only rounding may differ. A selection mistake
    moves an entry by a whole |tau| (>= 1e-4 here), far above this tolerance."""
    g = got.detach().float().reshape(-1).numpy().astype(np.float64)
    err = np.abs(g - ref.reshape(-1))
    tol = 2e-6 + 2e-6 * np.abs(ref.reshape(-1))
    if not np.all(err <= tol):
        i = int(np.argmax(err - tol))
        raise AssertionError(f"{what}: entry {i} got {g[i]!r}, reference {ref.reshape(-1)[i]!r} (err {err[i]:.3g})")


# ----------------------------------------------------------------------------- helpers


def rand_case(rng, shape=(7, 13), K=3, scale=0.05):
    base = rng.standard_normal(shape).astype(np.float32)
    experts = [(base + scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(K)]
    taus = [(e - base).astype(np.float32) for e in experts]  # float32 subtraction, as stored
    return base, taus


def rand_vals(rng, method, K, density=None):
    # elect methods: mixed-sign weights can make the divisor ~0 (ill-conditioned); the
    # negative-weight semantics are checked exactly in test_ties_normalisation_is_mergekit_style
    v = {"weight": list(rng.uniform(0.0 if method in ("ties", "dare_ties") else -0.5, 1.5, K))}
    if method in ("ties", "dare_ties", "dare_linear", "breadcrumbs"):
        v["density"] = list(rng.uniform(0.05, 0.95, K)) if density is None else [density] * K
    if method == "breadcrumbs":
        v["gamma"] = list(rng.uniform(0.0, 0.2, K))
    return v


def engine(method, base, taus, vals, options=None, *, seed=0, name="t", chunk=None):
    return merge_tensors(
        method, torch.from_numpy(base), [torch.from_numpy(t) for t in taus], vals, options, name=name, seed=seed, chunk=chunk
    )


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(7, 13), (64,), (3, 5, 11), (1,)])
def test_methods_equal_reference_on_random_tensors(method, shape):
    rng = np.random.default_rng(zlib.crc32(f"{method}{shape}".encode()))
    for K in (1, 2, 3, 5):
        base, taus = rand_case(rng, shape, K)
        vals = rand_vals(rng, method, K)
        seed = int(rng.integers(0, 2**62))
        got = engine(method, base, taus, vals, seed=seed, name="layer.w")
        ref = reference_merge(method, base, taus, vals, seed=seed, name="layer.w")
        assert_close_ref(got, ref, f"{method} K={K} {shape}")


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "breadcrumbs"])
@pytest.mark.parametrize("density", [0.0, 1e-4, 0.01, 0.5, 0.999, 1.0])
def test_density_edges_equal_reference(method, density):
    rng = np.random.default_rng(7)
    base, taus = rand_case(rng, (9, 17), 3)
    vals = rand_vals(rng, method, 3, density=density)
    got = engine(method, base, taus, vals, seed=11)
    assert_close_ref(got, reference_merge(method, base, taus, vals, seed=11, name="t"), f"{method} d={density}")


@pytest.mark.parametrize("method,options", [
    ("linear", {"normalize": False}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("ties", {"normalize": False, "lambda": 1.3}),
    ("dare_ties", {"rescale": "l1"}),
    ("dare_ties", {"rescale": "l1", "normalize": False, "lambda": 0.5}),
    ("dare_linear", {"rescale": "l1", "lambda": 2.0}),
    ("breadcrumbs", {"lambda": 0.4}),
])
def test_options_equal_reference(method, options):
    rng = np.random.default_rng(3)
    base, taus = rand_case(rng, (11, 19), 3)
    vals = rand_vals(rng, method, 3)
    got = engine(method, base, taus, vals, options, seed=5)
    assert_close_ref(got, reference_merge(method, base, taus, vals, options, seed=5, name="t"), f"{method} {options}")


def test_ties_normalisation_is_mergekit_style():
    """Divide by the sum of the *agreeing* weights, per entry; sign elected on weighted deltas."""
    base = np.zeros(4, dtype=np.float32)
    taus = [
        np.array([1.0, 1.0, -1.0, 2.0], dtype=np.float32),
        np.array([3.0, -1.0, -1.0, -1.0], dtype=np.float32),
        np.array([-2.0, 0.0, 1.0, 0.0], dtype=np.float32),
    ]
    vals = {"weight": [1.0, 2.0, 4.0], "density": [1.0, 1.0, 1.0]}
    got = engine("ties", base, taus, vals).numpy()
    # entry 0: D = (1, 6, -8), S = -1 -> E = -1: only expert 2 agrees: -8 / 4 = -2
    # entry 1: D = (1, -2, 0), S = -1 -> E = -1: expert 1: -2 / 2 = -1
    # entry 2: D = (-1, -2, 4), S = 1 -> E = +1: expert 2: 4 / 4 = 1
    # entry 3: D = (2, -2, 0), S = 0 -> E = +1 (ties go to +): expert 0: 2 / 1 = 2
    np.testing.assert_array_equal(got, np.array([-2.0, -1.0, 1.0, 2.0], dtype=np.float32))
    # without normalize: the plain disjoint sum
    got = engine("ties", base, taus, vals, {"normalize": False}).numpy()
    np.testing.assert_array_equal(got, np.array([-8.0, -2.0, 4.0, 2.0], dtype=np.float32))
    # a negative weight flips the delta's sign before the election
    vals2 = {"weight": [-1.0, 0.0, 0.0], "density": [1.0, 1.0, 1.0]}
    got = engine("ties", base, taus, vals2).numpy()
    # D = -tau_0 = (-1, -1, 1, -2); all agree with themselves; divisor = w = -1 -> tau_0 back
    np.testing.assert_array_equal(got, taus[0])


def test_ties_trim_keeps_top_k_exactly():
    tau = np.array([0.5, -3.0, 2.0, -0.1, 1.0, 0.0, -2.5, 0.25], dtype=np.float32)
    base = np.zeros_like(tau)
    # density 3/8 -> k = 3: keep -3.0, -2.5, 2.0
    got = engine("ties", base, [tau], {"weight": [1.0], "density": [3 / 8]}).numpy()
    np.testing.assert_array_equal(got, np.array([0, -3.0, 2.0, 0, 0, 0, -2.5, 0], dtype=np.float32))
    # k = int(0.1 * 8) = 0: nothing kept
    got = engine("ties", base, [tau], {"weight": [1.0], "density": [0.1]}).numpy()
    np.testing.assert_array_equal(got, np.zeros_like(tau))


def test_breadcrumbs_band_and_mergekit_rank_rule():
    assert breadcrumbs_ranks(0.5, 0.1, 100) == (10, 50)
    assert breadcrumbs_ranks(0.95, 0.1, 100) == (5, 95)  # n_top cut down to reach the density
    assert breadcrumbs_ranks(1.0, 0.1, 100) == (0, 100)
    tau = np.array([5.0, -4.0, 3.0, -2.0, 1.0, 0.5, -0.25, 0.125, 0.0625, 0.03125], dtype=np.float32)
    got = engine("breadcrumbs", np.zeros_like(tau), [tau], {"weight": [1.0], "density": [0.3], "gamma": [0.2]}).numpy()
    # n = 10, n_top = 2 (drop 5, -4), n_keep = 3 (keep 3, -2, 1)
    np.testing.assert_array_equal(got, np.array([0, 0, 3.0, -2.0, 1.0, 0, 0, 0, 0, 0], dtype=np.float32))


def test_linear_zero_weight_sum_gives_base():
    rng = np.random.default_rng(0)
    base, taus = rand_case(rng, (5, 5), 2)
    got = engine("linear", base, taus, {"weight": [0.0, 0.0]})
    np.testing.assert_array_equal(got.numpy(), base)
    tp = plan_tensor("linear", {"normalize": True}, {"weight": [0.0, 0.0]}, 25)
    assert tp.coeffs == [0.0, 0.0]


def test_dare_hash_matches_definition_and_is_chunk_invariant():
    for key in (0, 1, 2**31 + 12345, 2**32 - 1, ref_key(5, "x", 0)):
        got = dare_hash(key, 0, 1000).numpy().astype(np.uint32)
        np.testing.assert_array_equal(got, ref_hash31(key, 0, 1000))
        # any window gives the same bits as the full range, also past 2**31
        np.testing.assert_array_equal(dare_hash(key, 377, 100).numpy().astype(np.uint32), ref_hash31(key, 0, 1000)[377:477])
        np.testing.assert_array_equal(dare_hash(key, 2**31 + 5, 50).numpy().astype(np.uint32), ref_hash31(key, 2**31 + 5, 50))
    assert dare_key(5, "x", 0) == ref_key(5, "x", 0)
    # roughly uniform: the keep rate tracks the density
    h = dare_hash(99, 0, 200_000)
    for d in (0.1, 0.5, 0.9):
        rate = float((h < int(d * 2**31)).float().mean())
        assert abs(rate - d) < 0.01


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "ties", "breadcrumbs"])
def test_chunking_changes_nothing(method):
    rng = np.random.default_rng(1)
    base, taus = rand_case(rng, (37, 29), 3)
    vals = rand_vals(rng, method, 3)
    for opts in ({}, {"rescale": "l1"} if method.startswith("dare") else {}):
        a = engine(method, base, taus, vals, opts, seed=3, chunk=1 << 20)
        b = engine(method, base, taus, vals, opts, seed=3, chunk=64)
        assert torch.equal(a, b)


def test_dare_masks_depend_on_trial_and_tensor_not_order():
    rng = np.random.default_rng(2)
    base, taus = rand_case(rng, (20, 20), 2)
    vals = {"weight": [1.0, 1.0], "density": [0.5, 0.5]}
    a = engine("dare_linear", base, taus, vals, seed=1, name="x")
    assert torch.equal(a, engine("dare_linear", base, taus, vals, seed=1, name="x"))
    assert not torch.equal(a, engine("dare_linear", base, taus, vals, seed=2, name="x"))
    assert not torch.equal(a, engine("dare_linear", base, taus, vals, seed=1, name="y"))
    assert dare_key(1, "x", 0) != dare_key(1, "x", 1)


def test_sorted_magnitudes_lookup_is_exact():
    rng = np.random.default_rng(4)
    tau = torch.from_numpy(rng.standard_normal(1000).astype(np.float32))
    desc = np.sort(np.abs(tau.numpy()))[::-1]
    full = SortedMagnitudes(tau)
    part = SortedMagnitudes(tau, 100, 700)
    for k in (1, 2, 100, 433, 700, 1000):
        assert full.kth_largest(k) == float(desc[k - 1])
        if 100 <= k <= 700:
            assert part.kth_largest(k) == float(desc[k - 1])
    assert part.nbytes == 601 * 4
    with pytest.raises(IndexError):
        part.kth_largest(701)
    bf = SortedMagnitudes(tau.to(torch.bfloat16), 1, 1000)
    assert bf.kth_largest(10) == float(torch.sort(tau.to(torch.bfloat16).abs(), descending=True).values[9])


def test_options_validation():
    assert resolve_options("ties") == {"lambda": 1.0, "normalize": True}
    assert resolve_options("dare_linear", {"rescale": "l1", "weight": 0.3})["rescale"] == "l1"
    with pytest.raises(ConfigError, match="merge.params.rescale"):
        resolve_options("dare_ties", {"rescale": "l2"})


def test_bf16_work_dtype_stays_within_rounding():
    rng = np.random.default_rng(5)
    base, taus = rand_case(rng, (16, 16), 3)
    vals = rand_vals(rng, "ties", 3)
    ref = reference_merge("ties", base, taus, vals)
    got = merge_tensors("ties", torch.from_numpy(base), [torch.from_numpy(t) for t in taus], vals, work_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    np.testing.assert_allclose(got.float().numpy().reshape(-1), ref, rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_magnitude_trim_is_exact_at_thresholds(dtype):
    """hardshrink at the next float below a bound == the >= / < rule, also with many entries
    tied at the bound (bf16 has few mantissa bits) and with bounds at 0."""
    from search.merge.kernels import float_below, magnitude_trim_into

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, generator=g) * 0.02).to(dtype)
    x[::7] = x[3]  # many exact ties
    x[::11] = 0
    a = x.abs()
    vals = sorted({float(v) for v in a[:300]})
    for lo, hi in [(vals[10], None), (None, vals[-5]), (vals[5], vals[-20]), (0.0, None), (float(a[3]), None)]:
        keep = torch.ones_like(a, dtype=torch.bool)
        if lo is not None:
            keep &= a >= lo
        if hi is not None:
            keep &= a < hi
        ref = torch.where(keep, x, torch.zeros_like(x))
        got = magnitude_trim_into(x, lo, hi, torch.empty_like(x))
        assert torch.equal(got, ref), (dtype, lo, hi)
    for v in vals[1:50]:
        b = float_below(v, dtype)
        assert b < v and torch.tensor(b, dtype=dtype).item() == b  # representable, strictly below
        assert not ((a > b) & (a < v)).any()  # nothing of this dtype in between
