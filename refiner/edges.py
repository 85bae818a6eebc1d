"""Strong edges of an image: the edge rule shared by the refiner's label-fidelity check and the appearance
model's gate. numpy and OpenCV only, so training code that imports it runs where the simulator's packages are
absent."""

from __future__ import annotations

import cv2
import numpy as np


def as_unit_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {image.shape}")
    return image.astype(np.float32)


def strong_edges(image: np.ndarray, *, sigma_px: float = 1.5, quantile: float = 0.97) -> np.ndarray:
    """(H, W) bool one-pixel-wide strong edges: Canny on the Gaussian-smoothed image with the high threshold at
    the ``quantile`` of its gradient magnitude and the low one at half of it (invariant to a global gain)."""
    img = as_unit_image(image, "image")
    smooth = cv2.GaussianBlur(img, (0, 0), sigma_px) if sigma_px > 0 else img
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    high = float(np.quantile(np.hypot(gx, gy), quantile))
    if high <= 0:
        return np.zeros(img.shape, bool)
    # Canny on 16-bit Sobel derivatives: scale so that thresholds keep their float precision.
    scale = 2000.0 / high
    dx = np.clip(np.rint(gx * scale), -32768, 32767).astype(np.int16)
    dy = np.clip(np.rint(gy * scale), -32768, 32767).astype(np.int16)
    return cv2.Canny(dx, dy, 1000.0, 2000.0, L2gradient=True) > 0


def edge_agreement(edges: np.ndarray, truth: np.ndarray, tolerance_px: float) -> tuple[float, float, float]:
    """(precision, recall, F) of boolean edge pixels against true boundary pixels, each counted as found when
    the other set has a pixel within ``tolerance_px`` (Euclidean distance transform); zeros when either is empty."""
    edges, truth = np.asarray(edges, bool), np.asarray(truth, bool)
    if edges.shape != truth.shape:
        raise ValueError(f"edges {edges.shape} and labels {truth.shape} must have the same shape")
    if not truth.any() or not edges.any():
        return 0.0, 0.0, 0.0
    to_truth = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_edge = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = float((to_truth[edges] <= tolerance_px).mean())
    recall = float((to_edge[truth] <= tolerance_px).mean())
    return precision, recall, 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
