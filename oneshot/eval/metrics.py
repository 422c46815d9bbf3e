"""Image and face metrics on batched tensors, each per sample (a [B] tensor) unless it is a set statistic (FID).

Images are float [B, 3, H, W] in [0, 1] (``data_range`` 1) unless stated; the evaluation converts the avatar's
[-1, 1] renders first. The choices that papers disagree on are pinned and written down here:

* :func:`l1`: mean absolute difference over pixels and channels, images in [0, 1].
* :func:`psnr`: ``10 log10(data_range^2 / MSE)`` per image (MSE over pixels and channels), as scikit-image's
  ``peak_signal_noise_ratio`` with ``data_range=1``.
* :func:`ssim`: scikit-image's ``structural_similarity`` computed per channel and averaged, by default with the
  settings its documentation gives to match Wang et al. 2004 (``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1``: an 11 x 11 Gaussian window, statistics over the valid region);
  ``gaussian_weights=False, win_size=7, use_sample_covariance=True`` is scikit-image's default. Matched to
  ``structural_similarity(..., channel_axis=-1)`` to 1e-12 in the tests (float64).
* :func:`frechet_distance` / :func:`fid_from_features`: pytorch-fid's Frechet distance of two Gaussians fitted
  to features (mean, unbiased covariance as ``np.cov``), with ``tr sqrt(S1 S2)`` computed as the trace of the
  square root of the symmetric ``S1^1/2 S2 S1^1/2`` (eigenvalues), which equals scipy's ``sqrtm`` route.
* :func:`cosine_similarity`: CSIM, the cosine of two identity embeddings.
* :func:`coefficient_distance`: AED / APD, the mean absolute difference of two coefficient vectors.
* :func:`keypoint_distance`: AKD, the mean Euclidean distance between corresponding 2D landmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l1", "psnr", "ssim", "frechet_distance", "feature_statistics", "fid_from_features",
           "cosine_similarity", "coefficient_distance", "keypoint_distance"]


def _pair(a: Tensor, b: Tensor, name: str = "images") -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{name} must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"{name} must be two [B, C, H, W] tensors of one shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return a, b


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Per image [B]: mean |a - b| of images [B, C, H, W]."""
    a, b = _pair(a, b)
    return (a.double() - b.double()).abs().flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per image [B] PSNR in dB of images [B, C, H, W] whose values span `data_range` (1 for [0, 1]); identical
    images give +inf, as scikit-image does."""
    a, b = _pair(a, b)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _window(gaussian_weights: bool, sigma: float, win_size: int | None) -> tuple[Tensor, int]:
    """The 1-D window (float64) and its size, as scikit-image builds them (Gaussian: truncate 3.5)."""
    if gaussian_weights:
        radius = int(3.5 * sigma + 0.5)
        size = 2 * radius + 1 if win_size is None else int(win_size)
        if size != 2 * radius + 1:
            raise ValueError(f"with gaussian_weights the window follows sigma (win_size {2 * radius + 1} for sigma "
                             f"{sigma}), got win_size {win_size}")
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * x * x / (sigma * sigma))
        return w / w.sum(), size
    size = 7 if win_size is None else int(win_size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 1, got {win_size!r}")
    return torch.full((size,), 1.0 / size, dtype=torch.float64), size


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, gaussian_weights: bool = True, sigma: float = 1.5,
         win_size: int | None = None, use_sample_covariance: bool = False, k1: float = 0.01,
         k2: float = 0.03) -> Tensor:
    """Per image [B] SSIM of images [B, C, H, W]: scikit-image's ``structural_similarity`` with
    ``channel_axis`` set (each channel alone, then averaged), computed in float64.

    Defaults are Wang et al.'s settings (Gaussian window, sigma 1.5, population covariance); images smaller than
    the window (11 by default) are refused, as scikit-image refuses them.
    """
    a, b = _pair(a, b)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    w, size = _window(gaussian_weights, sigma, win_size)
    H, W = a.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"ssim: images must be at least {size} x {size} (the window), got {H} x {W}")
    B, C = a.shape[:2]
    x = a.double().reshape(B * C, 1, H, W)
    y = b.double().reshape(B * C, 1, H, W)
    w = w.to(x.device)
    kx, ky = w.view(1, 1, 1, size), w.view(1, 1, size, 1)

    def filt(t):  # the valid region of scikit-image's (separable) filter = its result cropped by (size - 1) / 2
        return F.conv2d(F.conv2d(t, kx), ky)

    n = size * size
    cov_norm = n / (n - 1) if use_sample_covariance else 1.0
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(B, C, -1).mean(2).mean(1)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D] (N >= 2), in float64, as pytorch-fid's
    ``np.mean(act, axis=0)`` and ``np.cov(act, rowvar=False)``."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be [N, D], got {list(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    f = features.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    e, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * e.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Frechet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` between two Gaussians (float64).

    ``tr (S1 S2)^1/2`` is taken as ``tr (S1^1/2 S2 S1^1/2)^1/2``: the same eigenvalues, but a symmetric
    positive semi-definite matrix, so no complex parts or singular-product retries are needed."""
    mu1, mu2 = torch.as_tensor(mu1).double().flatten(), torch.as_tensor(mu2).double().flatten()
    s1, s2 = torch.as_tensor(sigma1).double(), torch.as_tensor(sigma2).double()
    D = mu1.numel()
    if mu2.numel() != D or s1.shape != (D, D) or s2.shape != (D, D):
        raise ValueError(f"means must be [D] and covariances [D, D] of one D, got {list(mu1.shape)}, "
                         f"{list(s1.shape)}, {list(mu2.shape)}, {list(s2.shape)}")
    r1 = _sqrt_psd(s1)
    inner = r1 @ s2 @ r1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID between two sets of Inception features [N, 2048] (or any [N, D])."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Per sample [B]: cosine of embeddings [B, D] (CSIM with ArcFace embeddings)."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"embeddings must be two [B, D] tensors of one shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def coefficient_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per sample [B]: mean |a - b| over coefficient vectors [B, K] (AED on expression, APD on pose)."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"coefficients must be two [B, K] tensors of one shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return (a.double() - b.double()).abs().mean(1)


def keypoint_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per sample [B]: mean Euclidean distance between landmarks [B, K, 2] (AKD)."""
    if a.dim() != 3 or a.shape[-1] != 2 or a.shape != b.shape:
        raise ValueError(f"landmarks must be two [B, K, 2] tensors of one shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return (a.double() - b.double()).norm(dim=-1).mean(1)

