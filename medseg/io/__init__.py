"""Medical image I/O with exact geometry: read any supported scan, write masks on its grid, read and
write DICOM SEG."""

from medseg.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from medseg.io.dicom_seg import place_on_grid, read_dicom_seg, write_dicom_seg
from medseg.io.readers import as_volume, case_name, is_image_file, read_volume
from medseg.io.volume import Volume
from medseg.io.writers import write_mask, write_volume

__all__ = [
    "Volume",
    "as_volume",
    "atomic_path",
    "case_name",
    "is_image_file",
    "place_on_grid",
    "read_dicom_seg",
    "read_volume",
    "write_dicom_seg",
    "write_json_atomic",
    "write_mask",
    "write_text_atomic",
    "write_volume",
]
