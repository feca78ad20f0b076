"""Whole-scan inference, one path: volume -> lung mask -> network -> postprocess -> measurements.

``Segmenter.segment(volume)`` is the one function every consumer calls (``medseg infer``,
``medseg batch``, ``train-fp`` candidate collection and the benchmarks): it returns a
:class:`Segmentation` held in memory on the input grid and writes nothing.
``medseg.report.outputs.write_outputs`` writes one to files; ``Segmenter.run`` does read, segment
and write for one scan, and ``infer()`` is the ``medseg.infer`` Python API the CLI wraps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.inference.lung_mask import LungMaskResult
from medseg.inference.predictor import GridPrediction, Predictor, RoiPrediction
from medseg.io import Volume, as_volume, read_volume
from medseg.io import case_name as _strip_extension

if TYPE_CHECKING:
    from medseg.postprocess.components import ContextProbability

log = logging.getLogger(__name__)

#: Segmentation.status values
STATUS_OK = "ok"
STATUS_NO_LUNG = "no_lung"  # no plausible lung: no search was run (never reported as 0 nodules)
STATUS_BODY_SEARCH = "body_search"  # no plausible lung: the whole image was searched instead


@dataclass
class InferenceSettings:
    """How ``medseg infer`` runs."""

    model: str | None = None  # checkpoint path; None = bundled model
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    tta: bool = False
    overlap: float | None = None  # sliding-window overlap; None = the model plan's (0.5)
    window: tuple[int, int, int] | None = None  # sliding-window size (plan voxels); None = the plan's
    min_confidence: float | None = None  # component confidence cut; None = the model plan's
    save_probabilities: bool = False
    lung_mask: bool = True  # False = "crop mode": no lung masking/ROI (for nodule crops)
    crf: bool | None = None  # None = PostprocessSettings default
    dicom_seg: bool = True  # write DICOM SEG for DICOM input
    preview: bool = True
    quiet: bool = False
    #: a CT with no plausible lung: "fail" (status no_lung, no search) or "search_body"
    on_no_lung: str = "fail"
    masses: bool = True  # report masses from the coarse pass (when the model's plan has one)
    #: measure every candidate's coarse_* features (running the coarse pass for them) even where the
    #: model's classifier does not read them: for fitting (train-fp) or re-scoring (benchmarks) one
    coarse_features: bool = False
    precision: str | None = None  # auto|fp32|bf16|fp16; None = the model plan's
    runtime: str = "torch"  # torch|onnxruntime|openvino: what runs the network (medseg.models.runtime)
    output_format: str = "nii.gz"  # image files: nii.gz|nrrd|mha (medseg.io.writers.OUTPUT_FORMATS)


@dataclass
class Segmentation:
    """What one scan gives, in memory and on the input grid."""

    volume: Volume
    labels: np.ndarray  # uint16 instance labels 1..N (nodules and masses)
    lungs: np.ndarray | None  # uint8 lung mask, aerated lung (None in crop mode); see LungMaskResult
    nodules: list[dict[str, Any]]  # one measurement record per label (see medseg.report.measure)
    status: str = STATUS_OK
    warnings: list[str] = field(default_factory=list)
    lung_volume_ml: float | None = None
    probability: RoiPrediction | None = None  # the fine pass's probabilities (when kept)
    features: list[dict[str, Any]] = field(default_factory=list)  # every candidate's features
    coarse: GridPrediction | None = None  # the coarse pass (when kept with the probabilities)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: known-nodule mode: one row per given point (found or not, and its measurements)
    seeds: list[dict[str, Any]] | None = None

    @property
    def searched(self) -> bool:
        """Whether a nodule search ran (False: no plausible lung, nothing is known)."""
        return self.status != STATUS_NO_LUNG

    def probability_full(self) -> np.ndarray:
        """The probability map on the whole input grid (zeros where the network did not run)."""
        if self.probability is None:
            return np.zeros(self.volume.shape, np.float32)
        return self.probability.full(self.volume.shape)


@dataclass
class CaseResult:
    """What one scan produced (files and summary)."""

    case: str
    input: str
    outputs: dict[str, str]
    nodules: list[dict]
    n_nodules: int | None  # None when no search ran
    largest_diameter_mm: float | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    status: str = STATUS_OK
    seeds_found: int | None = None  # known-nodule mode: points whose nodule was found ...
    n_seeds: int | None = None  # ... of this many


class Segmenter:
    """A model loaded once (or a ready ``predictor``); ``segment`` runs it on one volume."""

    def __init__(self, settings: InferenceSettings | None = None, predictor: Predictor | None = None,
                 **overrides: Any) -> None:
        self.settings = dataclasses.replace(settings or InferenceSettings(), **overrides)
        if self.settings.on_no_lung not in ("fail", "search_body"):
            raise ValueError(f"on_no_lung must be 'fail' or 'search_body', got {self.settings.on_no_lung!r}")
        self.predictor = predictor or Predictor.from_checkpoint(
            self.settings.model, self.settings.device, tta=self.settings.tta, overlap=self.settings.overlap, window=self.settings.window,
            precision=self.settings.precision, runtime=self.settings.runtime)
        self.plan = self.predictor.plan

    # ----------------------------------------------------------------- pieces
    def lung_mask(self, volume: Volume) -> LungMaskResult | None:
        """The lung mask and field (None in crop mode)."""
        from medseg.inference.lung_mask import compute_lung_mask

        return compute_lung_mask(volume) if self.settings.lung_mask else None

    def postprocess_settings(self, whole_scan: bool):
        """How this model's probabilities become instances (detection cuts on whole scans only)."""
        from medseg.postprocess import CandidateClassifier, PostprocessSettings

        s = PostprocessSettings(threshold=float(self.plan.inference.threshold))
        if self.settings.crf is not None:
            s.crf = bool(self.settings.crf)
        s.restrict_to_lung = whole_scan
        if whole_scan:  # a crop is known to hold its nodule
            cut = self.settings.min_confidence
            s.min_confidence = float(self.plan.inference.min_confidence if cut is None else cut)
            if self.plan.inference.candidate_classifier:
                s.candidate_classifier = CandidateClassifier.from_dict(self.plan.inference.candidate_classifier)
        return s

    def model_info(self) -> dict[str, Any]:
        """What the report says about the model and how it ran."""
        return {
            "checkpoint": self.settings.model or "bundled",
            "plan_spacing": list(self.plan.spacing),
            "window": list(self.predictor.window),
            "overlap": self.predictor.overlap,
            "min_confidence": self.postprocess_settings(True).min_confidence,
            "mass_scale": self.plan.inference.mass_scale if self.settings.masses else 0.0,
            "device": str(self.predictor.device),
            "precision": self.predictor.network_precision,
            "runtime": self.predictor.runtime,
        }

    # ----------------------------------------------------------------- the one path
    def segment(self, image: Any, keep_probabilities: bool | None = None, progress: Any = None,
                lung_mask: Volume | np.ndarray | None = None) -> Segmentation:
        """Segment one scan (a :class:`Volume`, SimpleITK image or nibabel image) in memory.

        ``keep_probabilities`` (default: ``settings.save_probabilities``) keeps the fine pass's
        probability map in the result. A CT without a plausible lung comes back with status
        ``no_lung`` (or ``body_search`` with ``on_no_lung="search_body"``), never as 0 nodules.
        ``lung_mask``: a precomputed lung mask on the scan's grid, used instead of computing one
        (a Volume on another grid raises :class:`InputError` naming its file).
        """
        from medseg.inference.lung_mask import ct_warning

        volume = as_volume(image)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        lungs = self.lung_mask(volume) if lung_mask is None else _given_lung_mask(volume, lung_mask)
        timings["lung_mask_s"] = time.perf_counter() - t
        warnings = list(lungs.warnings) if lungs is not None else [w for w in [ct_warning(volume)] if w]
        status = STATUS_OK
        if lungs is not None and not lungs.found:
            if self.settings.on_no_lung == "fail":
                warnings.append("no nodule search was run: no plausible lung in this scan")
                empty = np.zeros(volume.shape, np.uint16)
                return Segmentation(volume, empty, lungs.mask, [], STATUS_NO_LUNG, warnings, lungs.volume_ml,
                                    timings=timings)
            warnings.append("no plausible lung: the whole image was searched instead (--on-no-lung search_body)")
            status, lungs = STATUS_BODY_SEARCH, None
        seg = self._search(volume, lungs, timings, progress)
        seg.status, seg.warnings = status, warnings + seg.warnings
        if not (self.settings.save_probabilities if keep_probabilities is None else keep_probabilities):
            seg.probability = seg.coarse = None
        return seg

    def wants_coarse_pass(self) -> bool:
        """Whether whole scans get the coarse pass: for masses, or for the candidates' coarse_*
        features (when the classifier reads them, or with ``coarse_features``)."""
        from medseg.postprocess.candidates import COARSE_FEATURES, CandidateClassifier

        if self.plan.inference.mass_scale <= 0:
            return False
        classifier = self.plan.inference.candidate_classifier
        reads = bool(classifier) and bool(set(COARSE_FEATURES) & set(CandidateClassifier.from_dict(classifier).inputs))
        return self.settings.masses or self.settings.coarse_features or reads

    def _search(self, volume: Volume, lungs: LungMaskResult | None, timings: dict[str, float],
                progress: Any) -> Segmentation:
        from medseg.inference.masses import coarse_pass
        from medseg.postprocess import postprocess

        whole_scan = lungs is not None and self.settings.lung_mask
        mask = lungs.mask if lungs is not None else None
        coarse = None
        if whole_scan and self.wants_coarse_pass():
            t = time.perf_counter()
            coarse = coarse_pass(self.predictor, volume, lungs, self.plan.inference.mass_scale)
            timings["coarse_pass_s"] = time.perf_counter() - t
        t = time.perf_counter()
        roi = self.predictor.predict_roi(volume, mask, progress=progress)
        timings["network_s"] = time.perf_counter() - t
        t = time.perf_counter()
        labels = np.zeros(volume.shape, np.uint16)
        lab_roi, features = postprocess(roi.probability, np.asarray(volume.array[roi.box]), volume.spacing,
                                        lung_mask=None if mask is None else mask[roi.box],
                                        settings=self.postprocess_settings(whole_scan),
                                        context=None if coarse is None else _shifted(coarse.on_input, roi.box))
        labels[roi.box] = lab_roi
        features = [_on_input_grid(f, roi.box) for f in features]
        timings["postprocess_s"] = time.perf_counter() - t
        if whole_scan and self.settings.masses:
            t = time.perf_counter()
            labels, features = self._add_masses(volume, lungs, labels, features, coarse)
            timings["mass_pass_s"] = time.perf_counter() - t
        nodules = self._measure(volume, labels, roi, features)
        return Segmentation(volume, labels, None if lungs is None else lungs.mask, nodules, STATUS_OK, [],
                            None if lungs is None else lungs.volume_ml, roi, features, coarse,
                            dict(roi.stats), timings)

    def _add_masses(self, volume: Volume, lungs: LungMaskResult, labels: np.ndarray,
                    features: list[dict[str, Any]], coarse: GridPrediction | None,
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Masses from the coarse pass replace the fine components they overlap."""
        from medseg.inference.masses import find_masses

        if coarse is None:
            return labels, features
        masses = find_masses(self.predictor, volume, lungs, self.plan.inference, coarse)
        if not masses:
            return labels, features
        remap = np.arange(int(labels.max()) + 1, dtype=np.uint16)
        for m in masses:
            remap[labels[m.box][m.mask]] = 0
        kept = [f for f in features if remap[f["label"]]]
        remap[:] = 0
        for i, f in enumerate(kept, start=1):
            remap[f["label"]] = i
        out = remap[labels]
        new_features = [{**f, "label": i} for i, f in enumerate(kept, start=1)]
        for m in masses:
            i = len(new_features) + 1
            out[m.box][m.mask] = i
            new_features.append({"label": i, "kind": "mass", "confidence": m.mean_probability,
                                 "mean_probability": m.mean_probability, "lung_contact": m.lung_contact,
                                 "equivalent_diameter_mm": m.equivalent_diameter_mm})
        return out, new_features

    def _measure(self, volume: Volume, labels: np.ndarray, roi: RoiPrediction,
                 features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from medseg.report.measure import measure_nodules

        nodules = measure_nodules(labels, volume, roi.probability, roi.box)
        by_label = {int(f.get("label", i + 1)): f for i, f in enumerate(features)}
        for n in nodules:
            f = by_label.get(n["id"], {})
            n["elongation"] = f.get("elongation")
            score = f.get("confidence")
            n["confidence"] = None if score is None else round(float(score), 4)
        return nodules

    def segment_seeds(self, image: Any, seeds: str | os.PathLike[str]) -> Segmentation:
        """Known-nodule volumetry: the nodule at each point of the ``seeds`` CSV, segmented in crop
        mode around it (see :mod:`medseg.inference.seeds`); every point is reported, found or not."""
        from medseg.inference.seeds import read_seeds, seed_rows, segment_seeds

        volume = as_volume(image)
        t = time.perf_counter()
        points = read_seeds(seeds, volume)
        labels, results = segment_seeds(self, volume, points)
        empty = RoiPrediction(np.zeros((0, 0, 0), np.float32), (slice(0, 0),) * 3)
        nodules = self._measure(volume, labels, empty, [])
        missed = sum(not r.found for r in results)
        warnings = [f"{missed} of {len(results)} seed points have no nodule"] if missed else []
        return Segmentation(volume, labels, None, nodules, STATUS_OK, warnings, None, None, [], None, {},
                            {"seeds_s": time.perf_counter() - t}, seed_rows(results, nodules))

    # ----------------------------------------------------------------- files
    def run(
        self, input_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], case_name: str | None = None,
        lung_mask: Volume | np.ndarray | None = None, seeds: str | os.PathLike[str] | None = None,
    ) -> CaseResult:
        """Read, segment and write one scan (``<case>_*`` files in ``out_dir``); ``lung_mask`` as
        in :meth:`segment`; ``seeds`` (a CSV of points) runs :meth:`segment_seeds` instead."""
        from medseg.report.outputs import write_outputs

        name = case_name or _case(input_path)
        t = time.perf_counter()
        volume = read_volume(input_path)
        read_s = time.perf_counter() - t
        bar = _progress(self.settings.quiet, name)
        if seeds is not None:
            seg = self.segment_seeds(volume, seeds)
        else:
            seg = self.segment(volume, progress=bar.update if bar else None, lung_mask=lung_mask)
        if bar:
            bar.close()
        seg.timings = {"read_s": read_s, **seg.timings}
        seg.timings["total_s"] = sum(seg.timings.values())
        for w in seg.warnings:
            log.warning("%s: %s", name, w)
        outputs = write_outputs(seg, out_dir, name, input_path=str(input_path), model=self.model_info(),
                                settings=dataclasses.asdict(self.settings), preview=self.settings.preview,
                                dicom_seg=self.settings.dicom_seg, output_format=self.settings.output_format)
        largest = max((n["longest_diameter_mm"] for n in seg.nodules), default=None)
        n = len(seg.nodules) if seg.searched else None
        found = None if seg.seeds is None else sum(bool(r["found"]) for r in seg.seeds)
        return CaseResult(name, str(input_path), outputs, seg.nodules, n, largest, seg.warnings, seg.timings,
                          seg.status, found, None if seg.seeds is None else len(seg.seeds))


def _given_lung_mask(volume: Volume, mask: Volume | np.ndarray) -> LungMaskResult:
    """A precomputed lung mask as a :class:`LungMaskResult` (its lung field is the mask itself)."""
    from medseg.errors import InputError
    from medseg.inference.lung_mask import NO_LUNG_ML, ct_warning

    if isinstance(mask, Volume):
        if not mask.same_grid(volume):
            raise InputError(mask.source, f"lung mask grid (size {list(mask.shape)}, spacing "
                                          f"{[round(v, 4) for v in mask.spacing]}) differs from the scan's (size "
                                          f"{list(volume.shape)}, spacing {[round(v, 4) for v in volume.spacing]}, "
                                          "or origin/direction): it must lie on the scan's grid")
        mask = mask.array
    array = np.asarray(mask)
    if array.shape != volume.shape:
        raise InputError(None, f"lung mask shape {array.shape} differs from the scan's {volume.shape}")
    binary = (array > 0).astype(np.uint8)
    volume_ml = float(np.count_nonzero(binary)) * volume.voxel_volume_mm3 / 1000.0
    warnings = [w for w in [ct_warning(volume)] if w]
    if volume_ml < NO_LUNG_ML:
        warnings.append(f"no plausible lung in the given lung mask (only {volume_ml:.0f} mL)")
    return LungMaskResult(binary, volume_ml, warnings, field=binary)


def _case(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    return p.name if p.is_dir() else _strip_extension(p)


def _progress(quiet: bool, name: str):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=f"{name} windows", unit="win", leave=False)


def infer(
    inputs: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    lung_masks: list[str | os.PathLike[str] | None] | None = None,
    seeds: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> list[CaseResult]:
    """Segment lung nodules in one or more scans (NIfTI/NRRD/MHA files or DICOM folders).

    ``settings`` are :class:`InferenceSettings` fields (``model``, ``device``, ``tta``...).
    Outputs go to ``out_dir`` as ``<case>_nodules.nii.gz``, ``<case>_lungs.nii.gz``,
    ``<case>_report.json``, ``<case>_nodules.csv``, ``<case>_preview.png`` and, for DICOM
    input, ``<case>_seg.dcm``. A scan with no plausible lung gets a report with status
    ``no_lung`` and no nodule files. ``lung_masks``: one precomputed lung mask file (or None)
    per input, on that scan's grid, used instead of computing one. ``seeds``: a CSV of known
    nodule points (world LPS/RAS mm or voxel indices), segmented one by one instead of a search;
    ``<case>_seeds.csv`` says for each point whether its nodule was found.

    A bad scan (:class:`InputError`) does not stop the others: with one input its error is
    raised; with several, every other scan is written and then :class:`~medseg.errors.ScansFailed`
    (an InputError naming each failed scan, holding the good scans' ``results``) is raised.
    """
    from medseg.errors import InputError, ScanFailure, ScansFailed
    from medseg.io.writers import image_suffix

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if lung_masks is not None and len(lung_masks) != len(inputs):
        raise InputError(None, f"{len(lung_masks)} lung mask(s) for {len(inputs)} scan(s): give one per scan, in order")
    segmenter = Segmenter(InferenceSettings(**settings))
    image_suffix(segmenter.settings.output_format)  # a bad format fails now, not after the first scan
    names = [_case(p) for p in inputs]
    dupes = {n for n in names if names.count(n) > 1}
    results, failures = [], []
    for i, path in enumerate(inputs):
        name = names[i] if names[i] not in dupes else f"{names[i]}_{i}"
        try:
            mask = read_volume(lung_masks[i]) if lung_masks is not None and lung_masks[i] is not None else None
            results.append(segmenter.run(path, out_dir, case_name=name, lung_mask=mask, seeds=seeds))
        except InputError as exc:
            if len(inputs) == 1:
                raise
            log.warning("%s: skipped: %s", name, exc)
            same = exc.path is None or Path(exc.path) == Path(path)
            failures.append(ScanFailure(str(path), name, exc.problem if same else str(exc)))
    if failures:
        raise ScansFailed(failures, len(inputs), results)
    return results


_SEGMENTERS: dict[tuple, Segmenter] = {}


def segment(image: Any, keep_probabilities: bool = False, **settings: Any) -> Segmentation:
    """Segment one scan in memory: ``medseg.segment(volume)`` -> :class:`Segmentation`.

    ``image``: a :class:`~medseg.io.Volume`, a SimpleITK image or a nibabel image. ``settings`` are
    :class:`InferenceSettings` fields; the model is loaded once per distinct settings and reused.
    Nothing is written: ``medseg.report.outputs.write_outputs(seg, out_dir, name)`` writes files.
    """
    key = tuple(sorted(settings.items()))
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()  # one model in memory at a time
        _SEGMENTERS[key] = Segmenter(InferenceSettings(**{"quiet": True, **settings}))
    return _SEGMENTERS[key].segment(image, keep_probabilities=keep_probabilities)


def _shifted(read: ContextProbability, box: tuple[slice, ...]) -> ContextProbability:
    """``read`` (boxes of the input grid) for boxes given relative to ``box``, as postprocessing,
    which runs inside the lung box, asks."""
    start = [s.start or 0 for s in box]
    return lambda b: read(tuple(slice(s.start + o, s.stop + o) for s, o in zip(b, start)))


def _on_input_grid(feature: dict[str, Any], box: tuple[slice, ...]) -> dict[str, Any]:
    """A component's voxel coordinates (``bbox``, ``centroid_ijk``) moved from the lung box, where
    postprocessing measured them, to the input grid that ``Segmentation.labels`` lies on."""
    start = [s.start or 0 for s in box]
    out = dict(feature)
    if "bbox" in out:
        out["bbox"] = [[int(a) + o, int(b) + o] for (a, b), o in zip(out["bbox"], start)]
    if "centroid_ijk" in out:
        out["centroid_ijk"] = [float(c) + o for c, o in zip(out["centroid_ijk"], start)]
    return out


__all__ = ["CaseResult", "InferenceSettings", "Segmentation", "Segmenter", "infer", "segment"]
