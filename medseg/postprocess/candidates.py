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
}

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


@dataclass
class CandidateClassifier:
    """Logistic regression on standardised candidate features: P(nodule | component)."""

    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0

    def __post_init__(self) -> None:
        unknown = [n for n in self.features if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown candidate features {unknown}; known: {sorted(FEATURES)}")
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError("candidate classifier: features, mean, scale and coef must have the same length")

    def score(self, feature: dict[str, Any]) -> float | None:
        """P(nodule) for one component's feature dict; None when a feature is missing."""
        x = feature_vector(feature, self.features)
        if x is None:
            return None
        return float(self.decision(x[None])[0])

    def decision(self, x: np.ndarray) -> np.ndarray:
        """P(nodule) for rows of raw feature vectors."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(z @ np.asarray(self.coef) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateClassifier:
        return cls(**data)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 10.0, features: list[str] | None = None) -> CandidateClassifier:
        """Fit on raw feature rows ``x`` (n, d) and labels ``y`` (1 = nodule).

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
                   intercept=float(theta[-1]))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t, np.float64)))


def confidence(feature: dict[str, Any], classifier: CandidateClassifier | None) -> float | None:
    """A component's confidence: the classifier's P(nodule), else its mean probability."""
    if classifier is not None:
        s = classifier.score(feature)
        if s is not None:
            return s
    return feature.get("mean_probability")
