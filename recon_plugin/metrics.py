"""Image quality metrics on magnitude images: SNR (as in the paper), PSNR, NMSE, SSIM, relative sharpness."""

from __future__ import annotations

import numpy as np
from skimage.filters import sobel
from skimage.metrics import structural_similarity

from .errors import ShapeMismatchError


def _magnitudes(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.abs(np.asarray(reference)).astype(np.float64)
    est = np.abs(np.asarray(estimate)).astype(np.float64)
    if ref.shape != est.shape:
        raise ShapeMismatchError(f"reference {ref.shape} and estimate {est.shape} differ in shape")
    return ref, est


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """20 log10 ||x|| / ||x - x_hat|| on magnitudes, in dB."""
    ref, est = _magnitudes(reference, estimate)
    err = np.linalg.norm(ref - est)
    return float("inf") if err == 0 else float(20 * np.log10(np.linalg.norm(ref) / err))


def psnr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Peak SNR, peak = max |x|, in dB."""
    ref, est = _magnitudes(reference, estimate)
    mse = np.mean((ref - est) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(ref.max() ** 2 / mse))


def nmse(reference: np.ndarray, estimate: np.ndarray) -> float:
    """||x - x_hat||^2 / ||x||^2 on magnitudes."""
    ref, est = _magnitudes(reference, estimate)
    return float(np.sum((ref - est) ** 2) / np.sum(ref**2))


def ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SSIM (scikit-image) on magnitudes, data range from the reference."""
    ref, est = _magnitudes(reference, estimate)
    data_range = float(ref.max() - ref.min()) or 1.0
    return float(structural_similarity(ref, est, data_range=data_range))


def sharpness(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Edge energy of the estimate relative to the reference: mean Sobel gradient magnitude of |x_hat| over that of
    |x|. 1 means edges as strong as the reference's; below 1 is blurrier (a smoothing prior), above 1 adds edges
    the reference lacks (noise, aliasing, hallucinated texture)."""
    ref, est = _magnitudes(reference, estimate)
    base = float(np.mean(sobel(ref)))
    return float("nan") if base == 0 else float(np.mean(sobel(est)) / base)


def all_metrics(reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """SNR, PSNR, NMSE and SSIM in one dict."""
    return {
        "snr_db": snr_db(reference, estimate),
        "psnr_db": psnr_db(reference, estimate),
        "nmse": nmse(reference, estimate),
        "ssim": ssim(reference, estimate),
    }
