"""Content manifest of the public LA / ACDC h5 files: SHA-256 of the image bytes then the label bytes (C order).

Hashing the arrays, not the files, makes the check independent of the h5 container (compression, chunking).
`data/MANIFEST.sha256` holds one line per case: `<dataset>/<name> <hex digest>`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from utils.errors import UserError

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "MANIFEST.sha256"
LA_FOLDER = "2018LA_Seg_Training Set"


def read_manifest(path: str | Path = MANIFEST) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (it ships with the repository as data/MANIFEST.sha256)")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"{path}:{number}: expected '<dataset>/<name> <sha256>', got {line!r}")
            entries[parts[0]] = parts[1]
    return entries


def content_hash(image: np.ndarray, label: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(np.ascontiguousarray(label).tobytes())
    return digest.hexdigest()


def h5_content_hash(path: str | Path) -> str:
    """Hash of an h5 case as stored (no dtype conversion); ValueError if it is not a readable case file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return content_hash(f["image"][()], f["label"][()])
    except (OSError, KeyError) as exc:
        raise UserError(f"{path} is not a readable h5 case with 'image' and 'label' ({exc})") from None


def relative_path(key: str) -> str:
    """Manifest key -> path inside the dataset folder (the layout the public code reads)."""
    dataset, name = key.split("/", 1)
    if dataset == "LA":
        return f"{LA_FOLDER}/{name}/mri_norm2.h5"
    return f"data/slices/{name}.h5" if "_slice_" in name else f"data/{name}.h5"


def dataset_keys(manifest: dict[str, str], dataset: str) -> list[str]:
    return [k for k in manifest if k.split("/", 1)[0] == dataset]


def verify_folder(root: str | Path, dataset: str, manifest: dict[str, str]) -> dict[str, list[str]]:
    """{'ok': [...], 'bad': [...], 'missing': [...]} manifest keys of `dataset` checked under `root`."""
    root = Path(root)
    report: dict[str, list[str]] = {"ok": [], "bad": [], "missing": []}
    for key in dataset_keys(manifest, dataset):
        path = root / relative_path(key)
        if not path.is_file():
            report["missing"].append(key)
            continue
        try:
            good = h5_content_hash(path) == manifest[key]
        except ValueError:
            good = False
        report["ok" if good else "bad"].append(key)
    return report
