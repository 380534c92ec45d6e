"""Convert the official ACDC challenge NIfTI release to the h5 layout the paper uses (the SSL4MIS preprocessing).

    python -m data.prepare_acdc /data/ACDC_raw /data/ACDC     # RAW holds training/ (and testing/) patient folders

For every `patientXXX/patientXXX_frameYY.nii.gz` with its `_gt.nii.gz` (the ED and ES frames):
  * axes: the NIfTI (x, y, z) array is stored as (S, H, W) = (z, y, x), i.e. reversed, as SimpleITK reads it;
  * intensity: min-max scaled to [0, 1] over the whole volume, float32 (no z-score, no resampling, no cropping);
  * labels: uint8, 0 background, 1 RV, 2 myocardium, 3 LV (the challenge's values, unchanged);
  * writes DEST/data/<patient>_<frame>.h5 (image, label: S x H x W) and one 2-D file per short-axis slice,
    DEST/data/slices/<patient>_<frame>_slice_<k>.h5 (H x W), k = 1..S from the first stored slice (1-based, as
    the public slice names).
The split lists ship with this repository (data/splits/ACDC/*.list); check the result with data/verify.py DEST.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import h5py
import numpy as np

from utils.cli import ScriptParser, run_cli
from utils.errors import UserError

FRAME = re.compile(r"^(?P<name>patient\d{3}_frame\d{2})\.nii(\.gz)?$")


def normalize_minmax(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low) if high > low else np.zeros_like(image)).astype(np.float32)


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")
    tmp.replace(path)


def convert_frame(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (S, H, W) in [0, 1], label uint8 (S, H, W)) of one frame."""
    import nibabel as nib

    image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(label_path)).dataobj)
    if image.shape != label.shape or image.ndim != 3:
        raise UserError(f"{image_path}: image {image.shape} and label {label.shape} must be equal 3-D shapes")
    return normalize_minmax(image).transpose(2, 1, 0).copy(), np.rint(label).astype(np.uint8).transpose(2, 1, 0).copy()


def prepare_acdc(raw: str | Path, dest: str | Path) -> list[str]:
    """Convert every labeled frame under `raw`; returns the volume names written."""
    raw, dest = Path(raw), Path(dest)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw} is not a folder; give the unpacked ACDC release (with patientXXX folders)")
    frames = sorted(p for p in raw.rglob("patient*_frame*.nii*") if FRAME.match(p.name))
    names = []
    for image_path in frames:
        name = FRAME.match(image_path.name)["name"]
        label_path = next((p for p in image_path.parent.glob(f"{name}_gt.nii*")), None)
        if label_path is None:
            continue  # a frame without ground truth is not part of the benchmark
        image, label = convert_frame(image_path, label_path)
        write_h5(dest / "data" / f"{name}.h5", image, label)
        for k in range(image.shape[0]):
            write_h5(dest / "data" / "slices" / f"{name}_slice_{k + 1}.h5", image[k], label[k])
        names.append(name)
    if not names:
        raise FileNotFoundError(f"no patientXXX_frameYY.nii.gz with a _gt file found under {raw}")
    print(f"{len(names)} volumes written to {dest / 'data'} (slices in {dest / 'data' / 'slices'})", file=sys.stderr)
    return names


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", help="the unpacked official ACDC release")
    p.add_argument("dest", help="output root (gets data/ and data/slices/)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    return run_cli(lambda: prepare_acdc(args.raw, args.dest), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
