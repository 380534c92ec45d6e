"""Writing label maps as NIfTI: the one writer of the test scripts (`--save_predictions`) and predict.py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_labels_nifti(path: str | Path, labels: np.ndarray, *, affine: np.ndarray | None = None, header=None,
                       spacing_mm: tuple[float, ...] | None = None) -> Path:
    """uint8 label NIfTI, written atomically, on the grid of its scan.

    With the scan's `affine` and `header` (predict.py on NIfTI input) the file has the input's geometry; a stored
    h5 array has none, so the affine is diagonal with `spacing_mm` (LA's 0.625 mm) or unit voxels.
    """
    import nibabel as nib

    path = Path(path)
    if affine is None:
        affine = np.diag([*(spacing_mm or (1.0,) * labels.ndim), 1.0])
    image = nib.Nifti1Image(labels.astype(np.uint8), affine, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)  # labels are stored values, not scaled intensities
    if header is not None:
        image.set_qform(*header.get_qform(coded=True))
        image.set_sform(*header.get_sform(coded=True))
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, str(tmp))
    os.replace(tmp, path)
    return path
