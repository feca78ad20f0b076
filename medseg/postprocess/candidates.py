"""Second-stage false-positive reduction: a candidate classifier over component features.

The network's voxel probabilities say "nodule-like here"; whether a whole component is a nodule
is a different question (a vessel fragment can be confidently nodule-like in its core). As in
the LUNA16 false-positive-reduction track, each candidate component gets a score from its own
features: here an L2-regularised logistic regression over world-unit features that
:func:`medseg.postprocess.components.component_features` measures (probability, size, shape,
Hessian blobness, density, lung contact). It is a few numbers, stored in the model's plan next to the
weights it was fitted for (``inference.candidate_classifier``), and fitted by
``medseg train-fp`` (:mod:`medseg.training.fp_reduction`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Candidate features, each a function of one component's feature dict (world units).
FEATURES: dict[str, Any] = {
    "mean_probability": lambda f: f["mean_probability"],
    "max_probability": lambda f: f["max_probability"],
    "log_diameter_mm": lambda f: math.log(max(f["equivalent_diameter_mm"], 1e-3)),
    "log_elongation": lambda f: math.log(f["elongation"]),
    "log_flatness": lambda f: math.log(f["flatness"]),
    "mean_hu": lambda f: f["mean_hu"] / 100.0,
    "std_hu": lambda f: f["std_hu"] / 100.0,
    "shell_dense": lambda f: f["shell_dense"],
    "lung_contact": lambda f: f["lung_contact"],
    "prob_blobness": lambda f: f["prob_blobness"],
    "hu_blobness": lambda f: f["hu_blobness"],
    "coarse_mean_probability": lambda f: f["coarse_mean_probability"],
    "coarse_max_probability": lambda f: f["coarse_max_probability"],
}

#: features read from the coarse pass (the pipeline runs it for them, masses or not)
COARSE_FEATURES: tuple[str, ...] = ("coarse_mean_probability", "coarse_max_probability")

#: ``medseg train-fp``'s default :attr:`CandidateClassifier.coarse_agreement`: off, by measurement
#: (2026-12-06, ``benchmarks/results/real_detection_coarse_agreement.json``). On real lung-base hybrids
#: (held-out LIDC nodules in the two torso scans) every false positive of the bundled network had a
#: coarse peak probability of at most 0.01, and the factor (exponent 0.5) raised the CPM there from
#: 0.33 to 0.52; on the real 5 mm chest of ``benchmarks/real_detection.py`` 28 false positives per
#: scan peak above 0.5 (hilar vessels), the coarse grid loses most 5-10 mm nodules, and the CPM fell
#: from 0.453 to 0.357. One real background did not predict the other.
COARSE_AGREEMENT = 0.0

#: What ``medseg train-fp`` fits on. Not the HU level or spread: on phantoms those are set by the
#: generator and would not carry over to real scans; probability, size, shape and what dense
#: tissue leaves the component do (and ranked candidates as well without HU: out-of-fold CPM
#: 0.744 vs 0.726 on 8 phantoms). The Hessian blobness of the probabilities and of the image
#: (contrast-free: a shape ratio) raised the out-of-fold CPM from 0.744 to 0.801 on 8 phantoms,
#: most at low false-positive rates (0.58 -> 0.76 sensitivity at 1/8 FP per scan).
DEFAULT_FEATURES: tuple[str, ...] = (
    "mean_probability", "max_probability", "log_diameter_mm", "log_elongation", "log_flatness", "shell_dense",
    "lung_contact", "prob_blobness", "hu_blobness",
)


def feature_vector(feature: dict[str, Any], names: list[str] | tuple[str, ...]) -> np.ndarray | None:
    """The named features of one component; None when one is missing (no lung mask, no image)."""
    try:
        return np.array([FEATURES[n](feature) for n in names], dtype=np.float64)
    except (KeyError, TypeError):
        return None


def classifier_inputs(features: list[str] | tuple[str, ...], coarse_agreement: float) -> list[str]:
    """The feature-dict values a classifier reads, in order: its features, then the coarse peak
    probability when ``coarse_agreement`` is on."""
    return [*features, *(["coarse_max_probability"] if coarse_agreement else [])]


@dataclass
class CandidateClassifier:
    """Logistic regression on standardised candidate features: P(nodule | component), optionally
    times the coarse pass's peak probability over the component to the power ``coarse_agreement``.

    The factor is fixed, not fitted: the regression is fitted on phantoms, where the coarse pass adds
    nothing the fine features do not say (its fitted weight is ~0); what it is worth on real lung
    differs from scan to scan (see ``COARSE_AGREEMENT``)."""

    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    #: exponent of the coarse peak probability that multiplies P(nodule); 0 = none (older checkpoints)
    coarse_agreement: float = 0.0

    def __post_init__(self) -> None:
        unknown = [n for n in self.features if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown candidate features {unknown}; known: {sorted(FEATURES)}")
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError("candidate classifier: features, mean, scale and coef must have the same length")

    @property
    def inputs(self) -> list[str]:
        """What :meth:`decision` reads, in its column order (:func:`classifier_inputs`)."""
        return classifier_inputs(self.features, self.coarse_agreement)

    def score(self, feature: dict[str, Any]) -> float | None:
        """The confidence of one component's feature dict; None when an input is missing."""
        x = feature_vector(feature, self.inputs)
        if x is None:
            return None
        return float(self.decision(x[None])[0])

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The confidence for rows of raw :attr:`inputs`."""
        n = len(self.features)
        z = (x[:, :n] - np.asarray(self.mean)) / np.asarray(self.scale)
        p = _sigmoid(z @ np.asarray(self.coef) + self.intercept)
        if self.coarse_agreement:
            p = p * np.clip(x[:, n], 0.0, 1.0) ** self.coarse_agreement
        return p

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateClassifier:
        return cls(**data)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 10.0, features: list[str] | None = None,
            coarse_agreement: float = 0.0) -> CandidateClassifier:
        """Fit the regression on raw feature rows ``x`` (n, d) and labels ``y`` (1 = nodule); the
        result multiplies by the coarse peak probability to the power ``coarse_agreement``.

        Classes are weighted to equal total weight (candidates are mostly false positives), and
        ``l2`` penalises the standardised coefficients, which keeps a fit on a few dozen nodules sane.
        """
        from scipy.optimize import minimize

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        names = list(features or DEFAULT_FEATURES)
        if x.ndim != 2 or x.shape[1] != len(names) or len(y) != len(x):
            raise ValueError(f"need x of shape (n, {len(names)}) and n labels, got {x.shape} and {y.shape}")
        if y.min() == y.max():
            raise ValueError("need both nodules and false positives to fit a candidate classifier")
        mean, scale = x.mean(0), x.std(0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        w = np.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            t = z @ theta[:-1] + theta[-1]
            # log(1 + e^t) - y t, stable
            nll = np.sum(w * (np.logaddexp(0.0, t) - y * t))
            r = _sigmoid(t) - y
            grad = np.append(z.T @ (w * r), np.sum(w * r))
            reg = 0.5 * l2 / len(y) * float(theta[:-1] @ theta[:-1])
            grad[:-1] += l2 / len(y) * theta[:-1]
            return nll + reg, grad

        res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
        theta = res.x
        return cls(features=names, mean=mean.tolist(), scale=scale.tolist(), coef=theta[:-1].tolist(),
                   intercept=float(theta[-1]), coarse_agreement=float(coarse_agreement))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t, np.float64)))


def confidence(feature: dict[str, Any], classifier: CandidateClassifier | None) -> float | None:
    """A component's confidence: the classifier's P(nodule), else its mean probability."""
    if classifier is not None:
        s = classifier.score(feature)
        if s is not None:
            return s
    return feature.get("mean_probability")
