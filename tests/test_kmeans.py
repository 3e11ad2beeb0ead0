"""compress.kmeans: exact 1-D Lloyd against a brute-force reference, inits, edge cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import InputError
from compress.kmeans import CentroidInit, assign_1d, boundaries, kmeans_1d, make_init


def brute_lloyd(x, c, max_iter=1000):
    """Textbook Lloyd on raw points: O(n k) distances, empty clusters keep their centroid."""
    c = np.sort(np.asarray(c, dtype=np.float64))
    for _ in range(max_iter):
        lab = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        new = np.array([x[lab == j].mean() if (lab == j).any() else c[j] for j in range(len(c))])
        new = np.sort(new)
        if np.array_equal(new, c):
            break
        c = new
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_linear_init(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 200)), int(rng.integers(1, 9))
    x = rng.standard_normal(n) * rng.uniform(0.01, 10) + rng.uniform(-5, 5)
    c, lab = kmeans_1d(x, k, init="linear", max_iter=1000, tol=0)
    if len(np.unique(x)) <= k:
        return
    ref_c, ref_lab = brute_lloyd(x, np.linspace(x.min(), x.max(), k))
    np.testing.assert_allclose(c, ref_c, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(lab, ref_lab)


def test_is_a_lloyd_fixed_point():
    x = np.random.default_rng(3).laplace(size=20000)
    for init in CentroidInit:
        c, lab = kmeans_1d(x, 16, init=init, max_iter=500, tol=0)
        assert np.all(np.diff(c) >= 0)
        for j in range(16):
            if (lab == j).any():
                assert c[j] == pytest.approx(x[lab == j].mean(), rel=1e-9, abs=1e-12)
        np.testing.assert_array_equal(lab, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1))


def test_histogram_close_to_exact():
    x = np.random.default_rng(4).standard_normal(300_000).astype(np.float32)
    c1, l1 = kmeans_1d(x, 16, method="sorted", max_iter=300, tol=0)
    c2, l2 = kmeans_1d(x, 16, method="histogram", max_iter=300, tol=0)
    span = float(x.max() - x.min())
    assert np.max(np.abs(c1 - c2)) < 1e-3 * span
    assert np.mean(l1 == l2) > 0.999
    np.testing.assert_array_equal(l2, assign_1d(x, c2))


def test_inits_differ_and_are_deterministic():
    x = np.random.default_rng(5).standard_normal(5000) ** 3
    res = {init: kmeans_1d(x, 8, init=init, max_iter=0, seed=1)[0] for init in CentroidInit}
    np.testing.assert_allclose(res[CentroidInit.LINEAR], np.linspace(x.min(), x.max(), 8))
    np.testing.assert_allclose(
        res[CentroidInit.DENSITY], np.quantile(x, (np.arange(8) + 0.5) / 8)
    )
    assert np.all(np.isin(res[CentroidInit.RANDOM], x))
    again = kmeans_1d(x, 8, init="random", seed=1)
    np.testing.assert_array_equal(again[0], kmeans_1d(x, 8, init="random", seed=1)[0])
    assert not np.array_equal(
        kmeans_1d(x, 8, init="random", seed=1, max_iter=0)[0],
        kmeans_1d(x, 8, init="random", seed=2, max_iter=0)[0],
    )


def test_few_distinct_values_and_constant():
    c, lab = kmeans_1d([2.0, 1.0, 1.0, 5.0], 6)
    np.testing.assert_array_equal(c, [1, 2, 5, 5, 5, 5])
    np.testing.assert_array_equal(c[lab], [2, 1, 1, 5])
    c, lab = kmeans_1d(np.full(10, 3.5, dtype=np.float32), 4)
    np.testing.assert_array_equal(c, [3.5] * 4)
    np.testing.assert_array_equal(lab, 0)
    c, lab = kmeans_1d([7], 1)
    assert c.tolist() == [7.0] and lab.tolist() == [0]


def test_empty_cluster_keeps_centroid():
    # Linear init puts centroids in the empty middle of two far clumps.
    x = np.concatenate([np.zeros(50), np.full(50, 100.0), [0.1, 99.9]])
    c, lab = kmeans_1d(x, 5, max_iter=50)
    assert c.shape == (5,) and lab.max() < 5
    assert np.bincount(lab, minlength=5).sum() == x.size
    np.testing.assert_array_equal(lab, assign_1d(x, c))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=80),
    st.integers(1, 12),
    st.sampled_from(["linear", "density", "random"]),
)
def test_properties(values, k, init):
    x = np.array(values, dtype=np.float32)
    c, lab = kmeans_1d(x, k, init=init)
    assert c.shape == (k,) and c.dtype == np.float64 and lab.dtype == np.int64
    assert np.all(np.diff(c) >= 0) and 0 <= lab.min() and lab.max() < k
    np.testing.assert_array_equal(lab, assign_1d(x, c))
    assert c.min() >= x.min() and c.max() <= x.max()


def test_ties_go_to_the_lower_cluster():
    c = np.array([0.0, 2.0])
    assert boundaries(c).tolist() == [1.0]
    assert assign_1d(np.array([1.0]), c).tolist() == [0]


def test_bad_arguments():
    with pytest.raises(InputError, match="init must be one of"):
        make_init("kmeans++")
    with pytest.raises(InputError, match="k must be"):
        kmeans_1d([1.0, 2.0], 0)
    with pytest.raises(InputError, match="no values"):
        kmeans_1d([], 3)
    with pytest.raises(InputError, match="NaN"):
        kmeans_1d([1.0, np.nan], 2)
    with pytest.raises(InputError, match="method"):
        kmeans_1d([1.0, 2.0], 2, method="fast")
