"""Realism: Fréchet Inception Distance, Kernel Inception Distance and a labelled face-space proxy.

FID is only comparable with published numbers when it uses the exact network of the original
TensorFlow implementation ("pt_inception-2015-12-05", the 2048-d pool features of Inception-v3
with the FID-specific pooling quirks, as ported by pytorch-fid). :class:`FIDInceptionV3` rebuilds
that architecture in plain torch (no torchvision) and loads a weights file the *user* supplies:
nothing is downloaded, and no package ships those weights.

Without the weights we still need a realism signal, so :data:`PROXY_NAME` labels a Fréchet
distance computed in the dlib 128-d face-recognition embedding space. It is **not** FID: its
scale differs and it mostly measures identity/face-shape statistics, so it must always be printed
with its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facexpr.errors import ConfigError, FacexprError
from facexpr.weights_io import read_tensors

FID_NAME = "FID (Inception-v3 pt_inception-2015-12-05)"
KID_NAME = "KID (Inception-v3 pt_inception-2015-12-05)"
PROXY_NAME = "FID-proxy (dlib face embedding)"
KID_PROXY_NAME = "KID-proxy (dlib face embedding)"


# --------------------------------------------------------------------------------------------
# Distances between feature sets
# --------------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"need at least 2 feature vectors (N, D) for a covariance; got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. The trace of the matrix square root is
    computed as ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``: that matrix is symmetric PSD, so unlike
    ``scipy.linalg.sqrtm(S1 @ S2)`` no complex round-off or eps-regularisation is needed when the
    covariances are singular (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ConfigError(f"mismatched Gaussian statistics: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N, D) and (M, D).

    With fewer samples than dimensions (a few hundred faces, 2048-d Inception features) the
    covariances have low rank, and the same number comes from the samples directly: with
    ``S1 = A A^T``, ``S2 = B B^T`` (A, B the centred samples / sqrt(n - 1)), the non-zero eigenvalues
    of ``S1^(1/2) S2 S1^(1/2)`` are those of ``(A^T B)(A^T B)^T``, so ``Tr (S1 S2)^(1/2)`` is the sum of
    the singular values of the small matrix ``A^T B``. That avoids two D x D eigendecompositions.
    """
    x = np.asarray(real, np.float64)
    y = np.asarray(fake, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ConfigError(f"need two (N, D) feature arrays with the same D and N >= 2; got {x.shape}, {y.shape}")
    d = x.shape[1]
    if len(x) * len(y) > d * d:
        return frechet_distance(*feature_stats(x), *feature_stats(y))
    a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = x.mean(0) - y.mean(0)
    return max(float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * tr_covmean), 0.0)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def kid_from_features(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``.

    Averaged over ``num_subsets`` random subsets of ``min(subset_size, N, M)`` items each (Bińkowski
    et al. 2018); returns (mean, std) over subsets. Deterministic for a given ``seed``.
    """
    x = np.asarray(real, np.float64)
    y = np.asarray(fake, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError(f"KID needs two (N, D) feature arrays with the same D; got {x.shape}, {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 samples per set; got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
        off = m * (m - 1)
        values[s] = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------------------------
# The FID Inception-v3
# --------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Convolution without bias + BatchNorm(eps 1e-3) + ReLU, the unit of every Inception block."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # The TF graph's average pools ignore padded zeros: count_include_pad=False.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool`` selects the FID quirk of the last block: the TF graph's final Mixed block
    pools with a 3x3 *max* pool where torchvision's Inception uses an average pool."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID: input RGB in [0, 1], any size; output (N, 2048) pool features.

    The input is resized to 299x299 (bilinear, no antialiasing, as pytorch-fid does) and scaled
    to [-1, 1]. Module names equal torchvision's ``Inception3`` so the ``pt_inception-2015-12-05``
    state dict loads unchanged (its 1008-way ``fc`` is not needed for features and is ignored).
    """

    FEATURES = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def load_fid_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an FID Inception state dict from safetensors, or from the original ``.pth`` file.

    A ``.pth`` is read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled
    objects, so a user-supplied file cannot run code.
    """
    p = Path(path)
    if not p.is_file():
        raise FacexprError(
            f"FID weights {p} not found: pass the pt_inception-2015-12-05 state dict "
            "(.pth from pytorch-fid's release, or converted to .safetensors) with --fid-weights"
        )
    if p.suffix.lower() == ".safetensors":
        return read_tensors(p, "pass the pt_inception-2015-12-05 state dict with --fid-weights")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise FacexprError(f"{p}: not a loadable tensor-only state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise FacexprError(f"{p}: expected a state dict, found {type(state).__name__}")
    return state


class InceptionFeatures:
    """Pool features of the FID network for uint8 RGB images (N, H, W, 3)."""

    name = FID_NAME

    def __init__(self, weights: str | Path | dict[str, torch.Tensor] | None, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.network = FIDInceptionV3()
        if weights is not None:
            state = weights if isinstance(weights, dict) else load_fid_weights(weights)
            state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
            missing, unexpected = self.network.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise FacexprError(
                    f"FID weights do not fit Inception-v3: {len(missing)} missing (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); pass pt_inception-2015-12-05"
                )
        self.network.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        arr = np.asarray(rgb)
        out = []
        for i in range(0, len(arr), self.batch_size):
            x = torch.tensor(np.asarray(arr[i : i + self.batch_size]), device=self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            out.append(self.network(x).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FIDInceptionV3.FEATURES))


def realism_scores(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float | int]:
    """FID-style and KID-style numbers between two feature sets, with the sample counts."""
    fid = fid_from_features(real_features, fake_features)
    kid, kid_std = kid_from_features(real_features, fake_features, kid_subsets, kid_subset_size, seed)
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "n_real": int(len(real_features)),
            "n_fake": int(len(fake_features)), "kid_subset_size": int(min(kid_subset_size, len(real_features), len(fake_features)))}

