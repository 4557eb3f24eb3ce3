"""FID/KID: closed forms for Gaussians and the Inception network's behaviour with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facexpr.errors import FacexprError
from facexpr.evaluation import fid as F


def test_frechet_distance_closed_form_diagonal() -> None:
    # For diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert F.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_closed_form_general() -> None:
    # Same covariance: distance is the squared mean shift alone; and scaled covariance
    # S2 = k^2 S1 gives Tr(S1) (1 - k)^2.
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 5))
    s = q @ q.T + np.eye(5)
    mu = rng.normal(size=5)
    shift = np.arange(5.0)
    assert F.frechet_distance(mu, s, mu + shift, s) == pytest.approx(shift @ shift, rel=1e-9)
    assert F.frechet_distance(mu, s, mu, 9.0 * s) == pytest.approx(np.trace(s) * 4.0, rel=1e-9)
    # against the textbook formula with scipy's sqrtm
    from scipy.linalg import sqrtm

    q2 = rng.normal(size=(5, 5))
    s2 = q2 @ q2.T
    ref = np.trace(s + s2 - 2 * sqrtm(s @ s2).real)
    assert F.frechet_distance(mu, s, mu, s2) == pytest.approx(ref, rel=1e-6)


def test_fid_from_samples_zero_and_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8))
    assert F.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    d = [F.fid_from_features(x, x + s) for s in (0.5, 1.0, 2.0)]
    # a pure shift by s in every one of 8 dims: 8 s^2
    assert d == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-9)
    # singular covariances (fewer samples than dims) stay finite and non-negative
    few = rng.normal(size=(5, 30))
    assert F.fid_from_features(few, few) == pytest.approx(0.0, abs=1e-6)


def test_low_rank_path_equals_covariance_path() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 40))
    y = rng.normal(size=(9, 40)) * 1.5 + 0.3
    direct = F.frechet_distance(*F.feature_stats(x), *F.feature_stats(y))
    assert F.fid_from_features(x, y) == pytest.approx(direct, rel=1e-7)  # 12 * 9 < 40^2: sample path


def test_kid_unbiased_and_ordered() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    y = rng.normal(size=(300, 16))
    same, _ = F.kid_from_features(x, y, num_subsets=20, subset_size=100)
    assert abs(same) < 0.05  # unbiased: near 0 for samples of the same distribution
    far, std = F.kid_from_features(x, y + 1.0, num_subsets=20, subset_size=100)
    assert far > 10 * abs(same) and std >= 0
    assert F.kid_from_features(x, y + 1.0, 20, 100, seed=3) == F.kid_from_features(x, y + 1.0, 20, 100, seed=3)


def test_inception_random_weights_self_distance() -> None:
    torch.manual_seed(0)
    net = F.FIDInceptionV3()
    # a loadable state dict round-trips through the loader's key filter (fc is ignored)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.zeros(1008, 2048)
    feats = F.InceptionFeatures(state, batch_size=4)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    f = feats(imgs)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    assert F.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    g = feats(np.clip(imgs.astype(int) + 60, 0, 255).astype(np.uint8))
    assert F.fid_from_features(f, g) > 0


def test_fid_weights_errors(tmp_path) -> None:
    with pytest.raises(FacexprError, match="not found"):
        F.load_fid_weights(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"nonsense": torch.zeros(1)}, bad)
    with pytest.raises(FacexprError, match="do not fit"):
        F.InceptionFeatures(bad)
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in F.FIDInceptionV3().state_dict().items()}, str(good))
    assert F.InceptionFeatures(good).network.Mixed_7c.max_pool
