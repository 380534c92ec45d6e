"""Convert the official ACDC challenge NIfTI release to the h5 files the paper uses (the SSL4MIS preprocessing).

    python -m data.prepare_acdc /data/ACDC_release /data/ACDC   # RAW holds training/ (and testing/) patient folders
    python -m data.verify /data/ACDC                             # every array against data/MANIFEST.sha256

The release: `patientXXX/` folders (under `training/`, `testing/` or RAW itself) with `Info.cfg`, the cine
`patientXXX_4d.nii.gz` (skipped) and the two labeled frames `patientXXX_frameYY.nii.gz` + `_gt.nii.gz`. Frames
without `_gt` are skipped (the first release's testing patients; later releases label them, and they are taken).

What is written, the layout of the public SSL4MIS files (`data/ACDC` of HiLab-git/SSL4MIS):
  * names by role, not by frame number: `<patient>_frame01` = end-diastole, `_frame02` = end-systole. The roles
    come from `Info.cfg` (`ED:` / `ES:` frame numbers); without a usable one, the lower-numbered `_gt` frame is
    taken as ED (the release's cines start at or near end-diastole) and the summary names each such patient;
  * axes: the NIfTI (x, y, z) array reversed to (S, H, W) = (z, y, x), the order SimpleITK returns;
  * intensity: SSL4MIS's min-max scaling, `code/dataloaders/acdc_data_processing.py:21-23`, reproduced with the
    same arithmetic: (x - min) / (max - min) in numpy on the array as stored (int16 arithmetic for the
    differences, numpy's true division), cast to float32 only afterwards. On integer frames this equals the
    cast-first order bit for bit; on frames stored as floats (or with a NIfTI scale factor) it does not;
  * labels: uint8, 0 background, 1 RV, 2 myocardium, 3 LV (the challenge's values, unchanged);
  * DEST/data/<patient>_frame0{1,2}.h5 (image, label: S x H x W) and one 2-D file per short-axis slice,
    DEST/data/slices/<patient>_frame0{1,2}_slice_<k>.h5 (H x W), k = 1..S. SSL4MIS's script numbers its slices
    from 0 (line 28-30); the files it published, which the split lists and data/MANIFEST.sha256 name, from 1;
  * DEST/conversion.json: which release frame became which file and where each role came from.
The split lists ship with this repository (data/splits/ACDC/*.list).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from utils.cli import ScriptParser, run_cli
from utils.errors import UserError

FRAME = re.compile(r"^(?P<patient>patient\d{3})_frame(?P<frame>\d{2,})\.nii(\.gz)?$")
ROLES = ("ED", "ES")  # written as _frame01, _frame02
CONVERSION_RECORD = "conversion.json"


@dataclass(frozen=True)
class LabeledFrame:
    patient: str
    frame: int  # the release's frame number (1-based time point of the cine)
    image_path: Path
    label_path: Path


def ssl4mis_minmax(volume: np.ndarray) -> np.ndarray:
    """SSL4MIS's scaling in its order of operations: numpy arithmetic on the stored dtype, float32 last.

    For an int16 volume, `volume - low` and `high - low` are int16 and the true division is float64; the
    float32 cast rounds that once. A constant volume (never in ACDC) gives zeros instead of SSL4MIS's NaNs.
    """
    low, high = volume.min(), volume.max()
    if high == low:
        return np.zeros(volume.shape, np.float32)
    return ((volume - low) / (high - low)).astype(np.float32)


def read_release_volume(path: Path) -> np.ndarray:
    """The NIfTI array as stored (its own dtype unless the header carries a scale factor), any dimensionality."""
    import nibabel as nib

    try:
        return np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types for damaged files
        raise UserError(f"{path}: not a readable NIfTI file ({exc}); re-download the release") from None


def read_info_cfg(path: Path) -> dict[str, str]:
    """`Key: value` lines of a patient's Info.cfg (ED, ES, Group, Height, NbFrame, Weight)."""
    entries = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


def labeled_frames(patient_dir: Path) -> list[LabeledFrame]:
    """The frames of one patient folder that have a `_gt` file, by frame number (the 4-D file is not a frame)."""
    frames = []
    for image_path in patient_dir.iterdir():
        match = FRAME.match(image_path.name)
        if match is None or match["patient"] != patient_dir.name:
            continue
        label_path = next(iter(sorted(patient_dir.glob(f"{match['patient']}_frame{match['frame']}_gt.nii*"))), None)
        if label_path is not None:
            frames.append(LabeledFrame(match["patient"], int(match["frame"]), image_path, label_path))
    return sorted(frames, key=lambda f: f.frame)


def assign_roles(patient_dir: Path, frames: list[LabeledFrame]) -> tuple[dict[str, LabeledFrame], str]:
    """{'ED': frame, 'ES': frame} and where the roles came from ('Info.cfg' or the reason for the fallback)."""
    by_number = {f.frame: f for f in frames}
    info = patient_dir / "Info.cfg"
    reason = f"no {info.name}"
    if info.is_file():
        entries = read_info_cfg(info)
        try:
            numbers = {role: int(entries[role]) for role in ROLES}
        except (KeyError, ValueError):
            reason = f"{info.name} without integer ED and ES entries"
        else:
            missing = [f"{role} frame {n}" for role, n in numbers.items() if n not in by_number]
            if numbers["ED"] == numbers["ES"]:
                reason = f"{info.name} names the same frame for ED and ES"
            elif missing:
                reason = f"{info.name}'s {' and '.join(missing)} has no _gt file"
            else:
                return {role: by_number[n] for role, n in numbers.items()}, "Info.cfg"
    if len(frames) != 2:
        raise UserError(f"{patient_dir}: {reason}, and {len(frames)} frames with a _gt file instead of 2; "
                        f"restore the patient's Info.cfg (ED: N, ES: M) from the release")
    return dict(zip(ROLES, frames, strict=True)), f"{reason}: ED = the earlier _gt frame"


def convert_frame(frame: LabeledFrame) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (S, H, W) in [0, 1], label uint8 (S, H, W)) of one labeled frame."""
    image, label = read_release_volume(frame.image_path), read_release_volume(frame.label_path)
    if image.ndim != 3 or image.shape != label.shape:
        raise UserError(f"{frame.image_path}: image {image.shape} and label {label.shape} must be equal 3-D shapes")
    if label.dtype != np.uint8:
        if not np.array_equal(label, np.rint(label)) or label.min() < 0 or label.max() > 255:
            raise UserError(f"{frame.label_path}: labels must be integers 0..3, found {label.dtype} values")
        label = label.astype(np.uint8)
    return ssl4mis_minmax(image).transpose(2, 1, 0).copy(), label.transpose(2, 1, 0).copy()


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")
    tmp.replace(path)


def output_name(patient: str, role: str) -> str:
    return f"{patient}_frame{ROLES.index(role) + 1:02d}"


def patient_folders(raw: Path) -> list[Path]:
    """Every `patientXXX` folder under RAW (RAW itself, training/, testing/, any depth)."""
    return sorted((p for p in raw.rglob("patient*") if p.is_dir() and re.fullmatch(r"patient\d{3}", p.name)),
                  key=lambda p: p.name)


def prepare_acdc(raw: str | Path, dest: str | Path) -> list[str]:
    """Convert every labeled patient under `raw`; returns the volume names written (`patientXXX_frame0{1,2}`)."""
    raw, dest = Path(raw), Path(dest)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw} is not a folder; give the unpacked ACDC release (with patientXXX folders)")
    names, record, fallbacks, unlabeled = [], {}, [], []
    for patient_dir in patient_folders(raw):
        frames = labeled_frames(patient_dir)
        if not frames:
            unlabeled.append(patient_dir.name)
            continue
        if patient_dir.name in record:
            raise UserError(f"{patient_dir}: {patient_dir.name} appears twice under {raw}; keep one copy")
        roles, source = assign_roles(patient_dir, frames)
        if source != "Info.cfg":
            fallbacks.append(f"{patient_dir.name} ({source})")
        record[patient_dir.name] = {"roles_from": source}
        for role, frame in roles.items():
            name = output_name(frame.patient, role)
            image, label = convert_frame(frame)
            write_h5(dest / "data" / f"{name}.h5", image, label)
            for k in range(image.shape[0]):
                write_h5(dest / "data" / "slices" / f"{name}_slice_{k + 1}.h5", image[k], label[k])
            record[patient_dir.name][name] = {"role": role, "release_frame": frame.frame,
                                              "source": str(frame.image_path.relative_to(raw))}
            names.append(name)
    if not names:
        raise FileNotFoundError(f"no patientXXX folder with patientXXX_frameYY.nii.gz + _gt files found under {raw}")
    tmp = dest / f".{CONVERSION_RECORD}.tmp"
    tmp.write_text(json.dumps({"release": str(raw.resolve()), "patients": record}, indent=1) + "\n")
    tmp.replace(dest / CONVERSION_RECORD)
    print(f"{len(names)} volumes of {len(record)} patients written to {dest / 'data'} (slices in "
          f"{dest / 'data' / 'slices'}); _frame01 = end-diastole, _frame02 = end-systole", file=sys.stderr)
    if unlabeled:
        print(f"skipped {len(unlabeled)} patients without _gt files: {', '.join(unlabeled)}", file=sys.stderr)
    for line in fallbacks:
        print(f"roles from the frame order: {line}", file=sys.stderr)
    print(f"check the result: python -m data.verify {dest}", file=sys.stderr)
    return names


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", help="the unpacked official ACDC release")
    p.add_argument("dest", help="output root (gets data/, data/slices/ and conversion.json)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    return run_cli(lambda: prepare_acdc(args.raw, args.dest), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
