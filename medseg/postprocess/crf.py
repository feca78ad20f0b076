"""3D dense CRF refinement of nodule boundaries, run box by box around candidate components.

A fully connected CRF (Krähenbühl & Koltun 2011) with a spatial smoothness kernel and a
bilateral (position + HU) kernel pulls the boundary of a blurred probability map onto the CT
intensity edge. Kernel widths are given in mm and divided by the voxel spacing, so a 2.5 mm
slice gap is not treated like a 0.7 mm pixel. Cost: only a padded box around each candidate
component is solved, so it scales with the number and size of candidates, not with the scan.

Backends: ``pydensecrf2`` (optional extra ``medseg[crf]``; permutohedral lattice, N-D features,
fast on CPU) and a torch mean-field with exact Gaussians truncated to a local window (no extra
dependency, runs on GPU; about 8x slower than pydensecrf on CPU). Choice and defaults come from
``benchmarks/crf_benchmark.py``; ``PostprocessSettings.crf`` stays off until it shows a gain on
network probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np


@dataclass
class CRFSettings:
    """Dense-CRF parameters (world units)."""

    iterations: int = 5
    pad_mm: float = 6.0               # margin around each candidate's bounding box
    smooth_sigma_mm: float = 1.0      # spatial smoothness kernel
    smooth_weight: float = 0.0        # per unit of kernel mass (see _kernel_mass); 0: off, it
                                      # only eroded nodules in the sweep (benchmarks/crf_benchmark.py)
    bilateral_sigma_mm: float = 1.5   # spatial extent of the appearance kernel
    bilateral_sigma_hu: float = 20.0  # intensity difference that counts as "same tissue"
    bilateral_weight: float = 2.0     # vs the unary log-odds; the kernel is row-normalised
    hu_window: tuple[float, float] = (-1000.0, 400.0)  # clip before the bilateral kernel
    normalize: str = "before"         # pydensecrf: bilateral rows sum to 1 ("before") or mass-scaled
    backend: str = "auto"             # "pydensecrf" (permutohedral lattice), "torch" (exact,
                                      # truncated local kernels, runs on GPU too) or "auto":
                                      # pydensecrf when installed (4x faster on CPU), else torch
    truncate: float = 2.0             # torch: kernel radius in sigmas
    device: str = "cpu"               # torch backend device
    min_kept_fraction: float = 0.5    # guard: a box whose CRF mask keeps less of the thresholded
    max_growth: float = 2.0           # candidate, or grows beyond this factor, keeps the threshold
    min_voxels: int = 4               # candidates smaller than this are left as they are
    max_box_mm: float = 60.0          # candidates whose box is longer than this along any axis
                                      # (vessel trees, masses; a 30 mm nodule's box is 42 mm) are
                                      # left as they are: it bounds the CRF's time and memory


def _require_pydensecrf():
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dutils
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "CRF refinement needs pydensecrf2: pip install 'medseg[crf]' (or disable crf)"
        ) from exc
    return dcrf, dutils


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``pydensecrf`` when it imports, else ``torch`` (both measured to help)."""
    if backend != "auto":
        return backend
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return "torch"
    return "pydensecrf"


def _kernel_mass(sigma_vox: np.ndarray) -> float:
    """Sum of the Gaussian's weights over the voxel grid, self excluded.

    Pairwise weights are divided by it, so a weight means the same energy (relative to the unary
    -log p) whatever the spacing and kernel width: a fixed per-pair weight would let a wide
    kernel on fine voxels outvote the network and erode small nodules away.
    """
    mass = 1.0
    for s in sigma_vox:
        n = np.arange(-int(np.ceil(4 * s)) - 1, int(np.ceil(4 * s)) + 2)
        mass *= float(np.exp(-(n**2) / (2 * s * s)).sum())
    return max(mass - 1.0, 1e-6)


def crf_box(
    probability: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    settings: CRFSettings | None = None,
) -> np.ndarray:
    """Refine one box: returns the CRF's nodule probability (float32, same shape)."""
    s = settings or CRFSettings()
    dcrf, dutils = _require_pydensecrf()
    sp = np.asarray(spacing, dtype=np.float64)
    p = np.clip(probability.astype(np.float32), 1e-5, 1 - 1e-5)
    softmax = np.stack([1.0 - p, p])
    n = p.size
    crf = dcrf.DenseCRF(n, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(dutils.unary_from_softmax(softmax)))
    if s.smooth_weight > 0:  # a zero-weight kernel would still be filtered every iteration
        smooth = s.smooth_sigma_mm / sp
        crf.addPairwiseEnergy(
            dutils.create_pairwise_gaussian(sdims=tuple(smooth), shape=p.shape),
            compat=s.smooth_weight / _kernel_mass(smooth),
        )
    norm = dcrf.NORMALIZE_BEFORE if s.normalize == "before" else dcrf.NORMALIZE_SYMMETRIC
    hu = np.clip(image.astype(np.float32), *s.hu_window)
    bil = s.bilateral_sigma_mm / sp
    crf.addPairwiseEnergy(
        dutils.create_pairwise_bilateral(sdims=tuple(bil), schan=(s.bilateral_sigma_hu,), img=hu, chdim=-1),
        compat=s.bilateral_weight if s.normalize == "before" else s.bilateral_weight / _kernel_mass(bil),
        kernel=dcrf.DIAG_KERNEL, normalization=norm,
    )
    q = np.asarray(crf.inference(s.iterations), dtype=np.float32)
    return q[1].reshape(p.shape)


def crf_box_torch(
    probability: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    settings: CRFSettings | None = None,
) -> np.ndarray:
    """Mean-field CRF of one box in torch, same model as :func:`crf_box` with exact Gaussians
    truncated at ``truncate`` sigmas. Two labels and a Potts compatibility reduce the update to
    logit(Q) = logit(p) + w_b (2 m_b - 1) + w_s (2 m_s - 1), with m the kernel-weighted mean of
    Q over the neighbourhood (bilateral kernel row-normalised, smoothness kernel mass-normalised).
    """
    import torch

    s = settings or CRFSettings()
    dev = torch.device(s.device)
    if dev.type == "cpu":
        # hundreds of small ops on a small box: intra-op threads only add overhead (8x slower
        # measured on a loaded 2-core machine), so run single-threaded and restore afterwards
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _mean_field(probability, image, spacing, s, dev)
        finally:
            torch.set_num_threads(threads)
    return _mean_field(probability, image, spacing, s, dev)


def _mean_field(probability, image, spacing, s: CRFSettings, dev) -> np.ndarray:
    import torch

    sp = np.asarray(spacing, dtype=np.float64)
    p = torch.from_numpy(np.clip(probability.astype(np.float32), 1e-5, 1 - 1e-5)).to(dev)
    unary = torch.log(p) - torch.log1p(-p)
    hu = torch.from_numpy(np.clip(image.astype(np.float32), *s.hu_window)).to(dev)
    sig_b = s.bilateral_sigma_mm / sp
    sig_s = s.smooth_sigma_mm / sp
    use_s = s.smooth_weight > 0
    rad = [int(np.ceil(s.truncate * max(b, sm if use_s else 0.0))) for b, sm in zip(sig_b, sig_s)]
    shape = p.shape
    pad = [r for r in rad[::-1] for _ in (0, 1)]  # F.pad order: last axis first
    valid = torch.nn.functional.pad(torch.ones(shape, device=dev), pad)
    hu_pad = torch.nn.functional.pad(hu, pad)
    offsets, w_b, w_s = [], [], []
    for di in range(-rad[0], rad[0] + 1):
        for dj in range(-rad[1], rad[1] + 1):
            for dk in range(-rad[2], rad[2] + 1):
                if di == dj == dk == 0:
                    continue
                d = np.array([di, dj, dk], dtype=np.float64)
                zb, zs = np.sum((d / sig_b) ** 2), np.sum((d / sig_s) ** 2)
                # ellipsoidal truncation: the box corners add ~half the work for weights < e^-2
                if zb > s.truncate**2 and (not use_s or zs > s.truncate**2):
                    continue
                sb = float(np.exp(-0.5 * zb))
                ss = float(np.exp(-0.5 * zs)) if use_s else 0.0
                view = tuple(slice(r + o, r + o + n) for r, o, n in zip(rad, (di, dj, dk), shape))
                w = sb * torch.exp(-0.5 * ((hu - hu_pad[view]) / s.bilateral_sigma_hu) ** 2) * valid[view]
                offsets.append(view)
                w_b.append(w)
                w_s.append(ss * valid[view] if use_s else None)
    if not offsets:
        return probability.astype(np.float32)
    norm_b = torch.stack(w_b).sum(0).clamp_min(1e-12)
    mass_s = _kernel_mass(sig_s)
    q = p
    for _ in range(s.iterations):
        q_pad = torch.nn.functional.pad(q, pad)
        m_b = torch.zeros_like(q)
        m_s = torch.zeros_like(q) if use_s else None
        for view, wb, ws in zip(offsets, w_b, w_s):
            qv = q_pad[view]
            m_b += wb * qv
            if use_s:
                m_s += ws * (2 * qv - 1)
        logit = unary + s.bilateral_weight * (2 * m_b / norm_b - 1)
        if use_s:
            logit = logit + s.smooth_weight * m_s / mass_s
        q = torch.sigmoid(logit)
    return q.cpu().numpy().astype(np.float32)


def candidate_boxes(
    mask: np.ndarray, spacing: tuple[float, float, float], pad_mm: float, min_voxels: int = 1,
    max_box_mm: float | None = None,
) -> list[tuple[slice, ...]]:
    """Bounding boxes (padded by ``pad_mm`` per side) of the 26-connected components of ``mask``;
    components with fewer than ``min_voxels`` voxels or a padded box longer than ``max_box_mm``
    along any axis are skipped."""
    labels = cc3d.connected_components(mask, connectivity=26)
    stats = cc3d.statistics(labels)
    pad = [int(np.ceil(pad_mm / float(s))) for s in spacing]
    boxes = []
    for lab in range(1, len(stats["voxel_counts"])):
        if stats["voxel_counts"][lab] < min_voxels:
            continue
        bb = stats["bounding_boxes"][lab]
        box = tuple(slice(max(b.start - q, 0), min(b.stop + q, n)) for b, q, n in zip(bb, pad, mask.shape))
        if max_box_mm is not None and any((b.stop - b.start) * float(s) > max_box_mm for b, s in zip(box, spacing)):
            continue
        boxes.append(box)
    return boxes


def refine(
    probability: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    threshold: float = 0.5,
    settings: CRFSettings | None = None,
) -> np.ndarray:
    """CRF-refined binary mask: outside the candidate boxes it equals ``probability >= threshold``.

    Each candidate (component of the thresholded map) gets its own padded box; where boxes
    overlap the refined masks are OR-ed so neither candidate is cut by the other's box.
    """
    s = settings or CRFSettings()
    if probability.shape != image.shape:
        raise ValueError(f"probability {probability.shape} and image {image.shape} differ in shape")
    mask = probability >= threshold
    if threshold != 0.5:
        # shift the unary so that the CRF's own 0.5 decision matches the caller's threshold
        t = float(np.clip(threshold, 1e-5, 1 - 1e-5))
        p = np.clip(probability.astype(np.float32), 1e-6, 1 - 1e-6)
        probability = 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) - np.log(t / (1 - t)))))
    boxes = candidate_boxes(mask, spacing, s.pad_mm, s.min_voxels, s.max_box_mm)  # its label map is freed before...
    out = mask.copy()  # ... these two are allocated: a lower peak
    touched = np.zeros(mask.shape, dtype=bool)
    for box in boxes:
        solve = crf_box_torch if resolve_backend(s.backend) == "torch" else crf_box
        q = solve(probability[box], image[box], spacing, s) >= 0.5
        m = mask[box]
        n = int(m.sum())
        # dense CRFs act like a vote among similar-intensity voxels: when the network marks less
        # than half of a nodule the vote can erase it, so implausible changes are refused
        if int((q & m).sum()) < s.min_kept_fraction * n or int(q.sum()) > s.max_growth * n:
            q = m
        out[box] = np.where(touched[box], out[box] | q, q)
        touched[box] = True
    return out
