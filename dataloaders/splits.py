"""Labeled / unlabeled / validation / test id lists for LA and ACDC.

The shipped lists live in `data/splits/<dataset>/` (SPLITS_DIR), apart from `./data/LA` and `./data/ACDC`, the
default data roots where downloads and restores land: no tool writing lists beside the cases touches them.
Labeled subsets follow the official code: the first N ids of the training list (LA), or the slices of the first N
patients of `train_slices.list` (ACDC).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from utils.errors import UserError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SPLITS_DIR = DATA_DIR / "splits"  # the shipped split lists, one folder per dataset (never written by a tool)

_LIST_CONTENTS = {
    "train.list": "one training case id per line",
    "test.list": "one test case id per line",
    "val.list": "one validation case id per line",
    "train_slices.list": "one training slice name per line (patientXXX_frameYY_slice_K)",
}


def read_list(path: str | Path) -> list[str]:
    """Ids of a `.list` file, one per line; blank lines and CR/LF line endings are ignored."""
    path = Path(path)
    if not path.is_file():
        what = _LIST_CONTENTS.get(path.name, "one id per line")
        raise FileNotFoundError(f"split list {path} not found; it should contain {what} (see docs/data.md)")
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        case_id = line.strip()
        if not case_id:
            continue
        # An id is a name inside the data root; a path could read (or, for outputs, write) outside it.
        if "/" in case_id or "\\" in case_id or case_id in (".", "..") or case_id.startswith("~"):
            raise UserError(f"split list {path} line {number}: {case_id!r} is a path, not a case id; list bare "
                             f"case names (the data root is given by --root_path)")
        ids.append(case_id)
    return ids


@dataclass
class Split:
    """Explicit id lists of one experiment; `test` reaches only the test scripts."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def la_split(labelnum: int, hold_out_val: bool = True, lists_dir: str | Path = SPLITS_DIR / "LA") -> Split:
    """LA split with the first `labelnum` ids of train.list labeled.

    hold_out_val=True (honest protocol): the val.list cases are neither labeled nor unlabeled training data.
    hold_out_val=False (paper protocol, the official code has no val set): they join the unlabeled pool.
    """
    lists_dir = Path(lists_dir)
    train = read_list(lists_dir / "train.list")
    val = read_list(lists_dir / "val.list")
    test = read_list(lists_dir / "test.list")
    val_set = set(val)
    # The true limit at once: held out, the first validation case in train.list ends the labeled prefix.
    limit = next((i for i, case in enumerate(train) if case in val_set), len(train)) if hold_out_val else len(train)
    if labelnum < 1 or labelnum > limit:
        if limit < len(train):
            reason = (f"{lists_dir / 'train.list'} lists {len(train)} cases and case {limit + 1} "
                      f"({train[limit]}) is a validation case of val.list, held out by --select val; choose "
                      f"--labelnum 1..{limit}, or --select last to train on the validation cases too")
        else:
            reason = f"{lists_dir / 'train.list'} lists {len(train)} cases; choose --labelnum 1..{limit}"
        raise UserError(f"--labelnum {labelnum} out of range: {reason}" if limit else
                        f"--labelnum {labelnum}: no case of {lists_dir / 'train.list'} can be labeled "
                        f"(its first case is a validation case of val.list); use --select last or reorder the list")
    labeled = train[:labelnum]
    rest = train[labelnum:]
    unlabeled = [case for case in rest if case not in val_set] if hold_out_val else rest
    return Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)


def patient_of(slice_or_volume_id: str) -> str:
    """'patient099_frame01_slice_15' -> 'patient099'."""
    return slice_or_volume_id.split("_", 1)[0]


def patients_to_slices(labeled_patients: int, slice_ids: list[str]) -> int:
    """Number of leading entries of `slice_ids` that belong to the first `labeled_patients` patients."""
    distinct = list(dict.fromkeys(patient_of(name) for name in slice_ids))
    if labeled_patients < 1 or labeled_patients > len(distinct):
        raise UserError(
            f"--labelnum {labeled_patients} (labeled patients) out of range: the list has {len(distinct)} "
            f"patients; choose --labelnum 1..{len(distinct)}"
        )
    chosen = set(distinct[:labeled_patients])
    count = 0
    for name in slice_ids:
        if patient_of(name) not in chosen:
            break
        count += 1
    # The list is ordered patient by patient; a chosen patient reappearing later would break the prefix cut.
    if any(patient_of(name) in chosen for name in slice_ids[count:]):
        raise UserError("train_slices.list is not grouped by patient; cannot cut labeled slices as a prefix")
    return count


def acdc_split(labeled_patients: int, lists_dir: str | Path = SPLITS_DIR / "ACDC") -> Split:
    """ACDC split: labeled = slices of the first `labeled_patients` patients of train_slices.list."""
    lists_dir = Path(lists_dir)
    slices = read_list(lists_dir / "train_slices.list")
    n_labeled = patients_to_slices(labeled_patients, slices)
    return Split(
        labeled=slices[:n_labeled],
        unlabeled=slices[n_labeled:],
        val=read_list(lists_dir / "val.list"),
        test=read_list(lists_dir / "test.list"),
    )
