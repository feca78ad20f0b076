"""Labelled dataset readers, detected from the folder layout.

Three layouts are recognised:

* MSD / nnU-Net: ``dataset.json`` with ``imagesTr/`` and ``labelsTr/`` (``case_0000.nii.gz``
  channel files or plain ``case.nii.gz`` images; labels ``case.nii.gz``);
* paired folders: ``image/`` + ``mask/`` (also ``images/`` + ``masks/`` / ``labels/``) holding files
  with the same names;
* phantom sets: ``<name>.nii.gz`` CT files beside ``<name>_nodules.nii.gz`` instance label maps.

Each case carries a ``group`` (the patient) so that splits never put one patient on both sides.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from medseg.errors import InputError
from medseg.io.readers import case_name, is_image_file

#: LIDC-IDRI file names start with the patient id: ``LIDC-IDRI-0001_R_1.nii.gz``.
_PATIENT_PATTERNS = (re.compile(r"^(LIDC-IDRI-\d{4})"),)
_PAIR_DIRS = (("image", "mask"), ("images", "masks"), ("image", "label"), ("images", "labels"))
_PHANTOM_LABEL_SUFFIX = "_nodules"


@dataclass(frozen=True)
class Case:
    """One labelled training case."""

    key: str  #: unique across all datasets of a run: ``<dataset>/<case>``
    image: str
    label: str
    group: str  #: patient id; cases of one group are always in the same fold
    dataset: str
    layout: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def patient_id(name: str) -> str | None:
    """The patient id encoded in a case name, when a known naming scheme gives one."""
    for pattern in _PATIENT_PATTERNS:
        m = pattern.match(name)
        if m:
            return m.group(1)
    return None


def _group(dataset: str, name: str) -> str:
    # Without a derivable patient id every case is its own patient (the safe default is not
    # possible: we cannot know two cases share a patient).
    return patient_id(name) or f"{dataset}/{name}"


def detect_layout(root: str | os.PathLike[str]) -> str:
    """``"msd"``, ``"pairs"`` or ``"phantoms"``; :class:`InputError` when none fits."""
    p = Path(root)
    if not p.is_dir():
        raise InputError(p, "dataset folder not found")
    if (p / "dataset.json").is_file() and (p / "imagesTr").is_dir():
        return "msd"
    for img, msk in _PAIR_DIRS:
        if (p / img).is_dir() and (p / msk).is_dir():
            return "pairs"
    if any(f.name.endswith(f"{_PHANTOM_LABEL_SUFFIX}.nii.gz") for f in p.iterdir()):
        return "phantoms"
    raise InputError(
        p,
        "unrecognised dataset layout (expected dataset.json + imagesTr/labelsTr, image/ + mask/ "
        "folders, or a phantom set of <name>.nii.gz + <name>_nodules.nii.gz)",
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and is_image_file(f))


def _read_msd(root: Path, name: str) -> list[Case]:
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(root / "dataset.json", f"cannot read dataset.json ({exc})") from exc
    cases: list[Case] = []
    training = meta.get("training")
    if isinstance(training, list) and training:  # MSD: explicit image/label pairs
        for item in training:
            image = (root / item["image"]).resolve()
            label = (root / item["label"]).resolve()
            if not image.is_file():
                # nnU-Net v1 lists "imagesTr/x.nii.gz" while the file on disk is x_0000.nii.gz
                alt = image.with_name(case_name(image) + "_0000" + image.name[len(case_name(image)):])
                image = alt if alt.is_file() else image
            cases.append(_case(name, case_name(label), image, label, "msd"))
    else:  # nnU-Net v2: pair by file name
        labels_dir = root / "labelsTr"
        if not labels_dir.is_dir():
            raise InputError(root, "dataset.json found but labelsTr/ is missing")
        for label in _image_files(labels_dir):
            stem = case_name(label)
            suffix = label.name[len(stem):]
            image = root / "imagesTr" / f"{stem}_0000{suffix}"
            if not image.is_file():
                image = root / "imagesTr" / label.name
            cases.append(_case(name, stem, image, label, "msd"))
    return cases


def _read_pairs(root: Path, name: str) -> list[Case]:
    for img, msk in _PAIR_DIRS:
        if (root / img).is_dir() and (root / msk).is_dir():
            break
    cases = []
    for image in _image_files(root / img):
        label = root / msk / image.name
        if not label.is_file():
            raise InputError(image, f"no mask with the same name in {root / msk}")
        cases.append(_case(name, case_name(image), image, label, "pairs"))
    return cases


def _read_phantoms(root: Path, name: str) -> list[Case]:
    cases = []
    for label in _image_files(root):
        stem = case_name(label)
        if not stem.endswith(_PHANTOM_LABEL_SUFFIX):
            continue
        base = stem[: -len(_PHANTOM_LABEL_SUFFIX)]
        image = root / f"{base}{label.name[len(stem):]}"
        if not image.is_file():
            raise InputError(label, f"phantom label without its CT {image.name}")
        case = _case(name, base, image, label, "phantoms")
        background = _hybrid_background(root / f"{base}.json")
        if background:  # hybrids of one real background are one patient: never on both sides of a split
            case = Case(case.key, case.image, case.label, f"{name}/background:{background}", name, case.layout)
        cases.append(case)
    return cases


def _hybrid_background(info: Path) -> str | None:
    """The real background a hybrid scan was built in (``medseg.data.hybrid``'s JSON), if any."""
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("background") if isinstance(data, dict) and data.get("generator") == "medseg.data.hybrid" else None


def _case(dataset: str, name: str, image: Path, label: Path, layout: str) -> Case:
    if not Path(image).is_file():
        raise InputError(image, "training image not found")
    if not Path(label).is_file():
        raise InputError(label, "training label not found")
    return Case(
        key=f"{dataset}/{name}",
        image=str(Path(image).resolve()),
        label=str(Path(label).resolve()),
        group=_group(dataset, name),
        dataset=dataset,
        layout=layout,
    )


_READERS = {"msd": _read_msd, "pairs": _read_pairs, "phantoms": _read_phantoms}


def read_dataset(root: str | os.PathLike[str], name: str | None = None) -> list[Case]:
    """All labelled cases of one dataset folder, layout detected automatically."""
    p = Path(root)
    layout = detect_layout(p)
    cases = _READERS[layout](p, name or p.resolve().name)
    if not cases:
        raise InputError(p, f"no labelled cases found ({layout} layout)")
    return cases


def read_datasets(roots: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Case]:
    """Cases of several datasets combined; dataset names are made unique when folders share a name."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise InputError(Path("."), "no training data given (use --data FOLDER)")
    names: list[str] = []
    cases: list[Case] = []
    for root in roots:
        base = Path(root).resolve().name
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
        cases.extend(read_dataset(root, name))
    return cases


def cases_by_key(cases: Iterable[Case]) -> dict[str, Case]:
    return {c.key: c for c in cases}
