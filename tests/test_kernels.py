"""kernels/: MMD^2 against a float64 brute-force double loop, and its properties."""
import itertools

import pytest
import torch

from m3d_condense.kernels import ESTIMATORS, KERNELS, kernel_matrix, mmd2, moment_gaps
from m3d_condense.kernels.mmd import GAUSSIAN_SCALES


def brute_force_mmd2(x, y, kernel, estimator):
    """Textbook MMD^2 with explicit loops over pairs, in float64."""
    x, y = x.double(), y.double()
    z = torch.cat([x, y])
    n_all = len(z)
    sigma2 = sum(float(((z[i] - z[j]) ** 2).sum()) for i in range(n_all) for j in range(n_all) if i != j)
    sigma2 /= n_all * (n_all - 1)

    def k(a, b):
        if kernel == "gaussian":
            d = float(((a - b) ** 2).sum())
            return sum(torch.exp(torch.tensor(-d / (s * sigma2), dtype=torch.float64)).item() for s in GAUSSIAN_SCALES)
        if kernel == "linear":
            return float(a @ b)
        return (float(a @ b) / len(a) + 1.0) ** 3

    def mean_k(p, q, same):
        pairs = [(i, j) for i in range(len(p)) for j in range(len(q)) if not (same and estimator == "unbiased" and i == j)]
        return sum(k(p[i], q[j]) for i, j in pairs) / len(pairs)

    return mean_k(x, x, True) + mean_k(y, y, True) - 2 * mean_k(x, y, False)


@pytest.mark.parametrize("kernel,estimator", list(itertools.product(KERNELS, ESTIMATORS)))
def test_mmd2_matches_float64_double_loop_to_1e6_relative(kernel, estimator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randn(7, 5, generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = brute_force_mmd2(x, y, kernel, estimator)
    got = mmd2(x, y, kernel, estimator).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_biased_mmd2_is_zero_for_identical_sets_and_symmetric(kernel):
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randn(5, 4, dtype=torch.float64) + 1.0
    assert mmd2(x, x, kernel).item() == pytest.approx(0.0, abs=1e-10)
    assert mmd2(x, y, kernel).item() == pytest.approx(mmd2(y, x, kernel).item(), rel=1e-12)
    assert mmd2(x, y, kernel).item() > 0


def test_linear_shortcut_equals_the_gram_matrix_v_statistic_with_its_gradient():
    """mmd2's O((n+m)d) linear path (DM's ||mean x - mean y||^2) against the general path: block
    means of the linear Gram matrix from kernel_matrix, value and gradient, batched."""
    x = torch.randn(3, 10, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, 6, dtype=torch.float64)
    shortcut = mmd2(x, y, "linear")
    k = kernel_matrix(torch.cat([x, y], dim=-2), "linear")
    gram = k[:, :10, :10].mean((-1, -2)) + k[:, 10:, 10:].mean((-1, -2)) - 2 * k[:, :10, 10:].mean((-1, -2))
    torch.testing.assert_close(shortcut, gram, rtol=1e-10, atol=1e-12)
    (g_short,) = torch.autograd.grad(shortcut.sum(), x)
    (g_gram,) = torch.autograd.grad(gram.sum(), x)
    torch.testing.assert_close(g_short, g_gram, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,estimator", list(itertools.product(KERNELS, ESTIMATORS)))
def test_batched_leading_dims_equal_one_call_per_problem(kernel, estimator):
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64)
    batched = mmd2(x, y, kernel, estimator)
    single = torch.stack([mmd2(x[i], y[i], kernel, estimator) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,estimator", list(itertools.product(KERNELS, ESTIMATORS)))
def test_mmd2_gradcheck_float64(kernel, estimator):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64)
    # The Gaussian bandwidth is detached by design, so check the gradient at a fixed bandwidth
    # (finite differences would otherwise also move the bandwidth).
    sigma2 = None
    if kernel == "gaussian":
        z = torch.cat([x, y]).detach()
        d = torch.cdist(z, z) ** 2
        sigma2 = d.sum() / (len(z) * (len(z) - 1))
    assert torch.autograd.gradcheck(lambda a: mmd2(a, y, kernel, estimator, sigma2=sigma2), (x,))


def test_gaussian_bandwidth_carries_no_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64)
    z = torch.cat([x, y]).detach()
    sigma2 = (torch.cdist(z, z) ** 2).sum() / (len(z) * (len(z) - 1))
    (g_default,) = torch.autograd.grad(mmd2(x, y), x)
    (g_fixed,) = torch.autograd.grad(mmd2(x, y, sigma2=sigma2), x)
    torch.testing.assert_close(g_default, g_fixed)


def test_invalid_kernel_or_estimator_names_the_choices():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="gaussian"):
        mmd2(x, x, kernel="rbf")
    with pytest.raises(ValueError, match="unbiased"):
        mmd2(x, x, estimator="exact")


def test_moment_gaps_zero_for_identical_and_per_order_for_shifted_sets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, generator=g)
    gaps = moment_gaps(x, x)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in gaps.values())
    shifted = moment_gaps(x, x + 2.0)  # only the mean moves
    assert shifted["mean"] == pytest.approx(2.0 * 3**0.5, rel=1e-6)
    assert shifted["variance"] == pytest.approx(0.0, abs=1e-6)
    scaled = moment_gaps(x, x * 2.0)  # variance moves, standardised moments do not
    assert scaled["variance"] > 1.0 and scaled["skewness"] == pytest.approx(0.0, abs=1e-5)
    skewed = moment_gaps(x, x.exp())
    assert skewed["skewness"] > 1.0 and skewed["kurtosis"] > 1.0


def test_moment_gaps_skip_dead_dimensions_for_the_standardised_orders():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(2000, 4, generator=g)
    real[:, 3] = 1e-4 * (2 * torch.randn(2000, generator=g)).exp()  # a nearly dead ReLU unit: tiny, wildly skewed
    syn = torch.randn(200, 4, generator=g)
    syn[:, 3] = 0.0
    kept, every = moment_gaps(syn, real), moment_gaps(syn, real, min_std_fraction=0.0)
    assert every["skewness"] > kept["skewness"] + 1.0 and every["kurtosis"] > kept["kurtosis"] + 1.0
    assert kept["mean"] == every["mean"] and kept["variance"] == every["variance"]  # raw orders keep every dimension
