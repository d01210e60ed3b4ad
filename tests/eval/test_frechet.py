"""Fréchet distance against closed forms and an independent eigen/SVD computation."""
import numpy as np
import pytest
from scipy.stats import ortho_group

import gladiff.eval.frechet as frechet_mod
from gladiff.eval.frechet import (FrechetDistanceError, frechet_distance, frechet_distance_features,
                                  gaussian_statistics, trace_sqrt_product)


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _reference_trace_sqrt(s1, s2):
    # tr((S1 S2)^{1/2}) = sum of singular values of S1^{1/2} S2^{1/2}: symmetric routines only,
    # so it is an independent (and well-conditioned) route to the same number.
    return np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum()


def test_one_dimensional_closed_form():
    # For 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    m1, v1, m2, v2 = 0.3, 4.0, -1.2, 0.25
    expected = (m1 - m2) ** 2 + (2.0 - 0.5) ** 2
    assert frechet_distance(m1, v1, m2, v2) == pytest.approx(expected, rel=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_closed_form():
    # Same eigenvectors, different eigenvalues: sum_i (sqrt(l1_i) - sqrt(l2_i))^2.
    rng = np.random.default_rng(1)
    d = 40
    q = ortho_group.rvs(d, random_state=2)
    l1, l2 = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu = rng.normal(size=d)
    expected = np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)


def test_identical_gaussians_give_zero_and_symmetry():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 20))
    mu, s = gaussian_statistics(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    y = rng.normal(size=(400, 20)) @ rng.normal(size=(20, 20)) * 0.3 + 1
    assert frechet_distance_features(x, y) == pytest.approx(frechet_distance_features(y, x), rel=1e-8)


def test_general_covariances_match_independent_computation():
    rng = np.random.default_rng(4)
    d = 64
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d, b @ b.T / d
    assert trace_sqrt_product(s1, s2) == pytest.approx(_reference_trace_sqrt(s1, s2), rel=1e-9)


def test_gaussian_statistics_match_numpy():
    x = np.random.default_rng(5).normal(size=(30, 4)).astype(np.float32)
    mu, s = gaussian_statistics(x)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(s, np.cov(x.astype(np.float64).T))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_statistics(x[:1])


@pytest.mark.parametrize("cond", [1e6, 1e10, 1e14])
def test_ill_conditioned_covariances(cond):
    # Eigenvalues spread over `cond` orders of magnitude, random non-commuting bases.
    rng = np.random.default_rng(6)
    d = 48
    lam = np.logspace(0, -np.log10(cond), d)
    q1, q2 = ortho_group.rvs(d, random_state=7), ortho_group.rvs(d, random_state=8)
    s1, s2 = (q1 * lam) @ q1.T, (q2 * lam[::-1]) @ q2.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                - 2 * _reference_trace_sqrt(s1, s2))
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-8 * np.trace(s1))


def test_rank_deficient_sample_covariances():
    # Fewer samples than dimensions (as with 2048-d features of a few hundred images): both
    # covariances are singular; the distance must still be finite and agree with the reference.
    rng = np.random.default_rng(9)
    d, n = 96, 40
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d)) * 1.5 + 0.2
    (m1, s1), (m2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * _reference_trace_sqrt(s1, s2)
    got = frechet_distance(m1, s1, m2, s2)
    assert got == pytest.approx(expected, rel=1e-4)


def test_singular_product_falls_back_to_eps_offset(monkeypatch):
    # When scipy's root comes out non-finite the eps offset is applied, with a warning; the result
    # then equals the distance of the offset covariances' product root.
    calls = []
    real_sqrtm = frechet_mod._sqrtm

    def flaky_sqrtm(a):
        calls.append(a.copy())
        return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(frechet_mod, "_sqrtm", flaky_sqrtm)
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])
    with pytest.warns(RuntimeWarning, match="singular product"):
        got = trace_sqrt_product(s1, s2, eps=1e-2)
    np.testing.assert_allclose(calls[1], (s1 + 1e-2 * np.eye(2)) @ (s2 + 1e-2 * np.eye(2)))
    assert got == pytest.approx(np.sqrt(1.01 * 0.01) + np.sqrt(0.01 * 4.01), rel=1e-9)


def test_imaginary_component_is_rejected():
    # A "covariance" with a negative eigenvalue: its product root is genuinely complex.
    with pytest.raises(FrechetDistanceError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
