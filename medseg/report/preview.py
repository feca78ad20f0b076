"""Preview PNG: nodules outlined on their key axial slices and on an axial MIP (Pillow only).

Display follows the radiological convention: axial images seen from the feet, patient's right
on the image's left, anterior at the top. Arrays are first reoriented to LPS (i -> patient left,
j -> posterior), so an axial plane shown as rows=j, columns=i is exactly that, whatever the
input orientation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume

WINDOW = (-1350.0, 150.0)  # lung window (HU)
COLOURS = [(255, 60, 60), (60, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255), (255, 140, 40)]
TILE = 256
MAX_SLICES = 3


def to_lps(array: np.ndarray, volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient ``array`` (on ``volume``'s grid) to LPS axes; returns it and its spacing."""
    import nibabel as nib

    src = nib.orientations.io_orientation(volume.affine_ras)
    tx = nib.orientations.ornt_transform(src, nib.orientations.axcodes2ornt(("L", "P", "S")))
    out = nib.orientations.apply_orientation(array, tx)
    spacing = tuple(float(volume.spacing[int(a)]) for a in tx[:, 0].argsort())
    return out, spacing  # type: ignore[return-value]


def _grey(plane: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip((plane.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _tile(grey_ij: np.ndarray, labels_ij: np.ndarray, spacing_ij: tuple[float, float], title: str):
    """Axial plane [i, j] -> RGB image rows=j (anterior top), columns=i (patient right at left)."""
    from PIL import Image, ImageDraw

    rgb = np.repeat(grey_ij.T[:, :, None], 3, axis=2).copy()
    lab = labels_ij.T
    for value in np.unique(lab[lab > 0]):
        m = lab == value
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = COLOURS[(int(value) - 1) % len(COLOURS)]
    img = Image.fromarray(rgb)
    # square pixels: scale by physical size
    h_mm, w_mm = lab.shape[0] * spacing_ij[1], lab.shape[1] * spacing_ij[0]
    scale = TILE / max(h_mm, w_mm)
    img = img.resize((max(1, round(w_mm * scale)), max(1, round(h_mm * scale))), Image.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 14), (0, 0, 0))
    canvas.paste(img, ((TILE - img.width) // 2, 14 + (TILE - img.height) // 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(255, 255, 255))
    draw.text((2, 14 + TILE // 2 - 5), "R", fill=(255, 255, 0))
    draw.text((TILE - 9, 14 + TILE // 2 - 5), "L", fill=(255, 255, 0))
    return canvas


def write_preview(
    path: str | os.PathLike[str],
    volume: Volume,
    labels: np.ndarray,
    nodules: list[dict] | None = None,
) -> Path:
    """Write the preview PNG atomically: a lung-window MIP with outlines, then key slices."""
    from PIL import Image

    ct, spacing = to_lps(np.asarray(volume.array), volume)
    lab, _ = to_lps(labels, volume)
    tiles = []
    mip_lab = lab.max(axis=2)
    tiles.append(_tile(_grey(ct.max(axis=2) if ct.shape[2] < 8 else _slab_mip(ct)), mip_lab, spacing[:2], "axial MIP"))
    ids = [n["id"] for n in (nodules or [])][:MAX_SLICES] or []
    boxes = ndimage.find_objects(lab, max_label=max(ids, default=0)) if ids else []  # no volume-sized masks
    for nid in ids:
        box = boxes[nid - 1] if 0 < nid <= len(boxes) else None
        if box is None:
            continue
        zs = [z for z in range(box[2].start, box[2].stop) if (lab[box[0], box[1], z] == nid).any()]
        z = int(zs[len(zs) // 2])
        tiles.append(_tile(_grey(ct[:, :, z]), lab[:, :, z], spacing[:2], f"nodule {nid}, slice {z}"))
    if len(tiles) == 1:  # no nodule: show the middle slice for context
        z = ct.shape[2] // 2
        tiles.append(_tile(_grey(ct[:, :, z]), lab[:, :, z], spacing[:2], f"slice {z} (no nodules)"))
    sheet = Image.new("RGB", (TILE * len(tiles), TILE + 14), (0, 0, 0))
    for n, t in enumerate(tiles):
        sheet.paste(t, (n * TILE, 0))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def _slab_mip(ct: np.ndarray) -> np.ndarray:
    """MIP of the lung window: bones clipped so that vessels and nodules stand out.

    Clipping from above commutes with the maximum, so the MIP is taken first: no volume copy.
    """
    return np.minimum(ct.max(axis=2), np.asarray(150, dtype=ct.dtype))
