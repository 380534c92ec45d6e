"""Split lists and labeled cuts (docs/method.md §1)."""
from __future__ import annotations

import pytest

from dataloaders.splits import (
    SPLITS_DIR,
    Split,
    acdc_split,
    la_split,
    patient_of,
    patients_to_slices,
    read_list,
)

FIRST_FOUR_LA = [
    "06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W",
]


def test_read_list_strips_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "train.list"
    path.write_bytes(b"A\r\n\r\nB  \n\nC")
    assert read_list(path) == ["A", "B", "C"]


def test_read_list_missing_file_names_path_and_contents(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.list.*one training case id per line"):
        read_list(tmp_path / "train.list")


def test_la_lists_have_80_20_8_ids_and_val_is_tail_of_train():
    train, test, val = (read_list(SPLITS_DIR / "LA" / f"{n}.list") for n in ("train", "test", "val"))
    assert (len(train), len(test), len(val)) == (80, 20, 8)
    assert len(set(train)) == 80 and not set(train) & set(test)
    assert val == train[-8:]


@pytest.mark.parametrize("labelnum", [4, 8, 16])
def test_la_split_honest_protocol_is_disjoint(labelnum):
    split = la_split(labelnum)
    assert split.labeled == read_list(SPLITS_DIR / "LA" / "train.list")[:labelnum]
    parts = [set(split.labeled), set(split.unlabeled), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 100
    assert len(split.unlabeled) == 80 - 8 - labelnum
    assert len(split.test) == 20 and len(split.val) == 8


def test_la_split_first_four_labeled_cases():
    assert la_split(4).labeled == FIRST_FOUR_LA
    assert la_split(8).labeled[:4] == FIRST_FOUR_LA


def test_la_split_paper_protocol_keeps_val_cases_unlabeled():
    honest, paper = la_split(8), la_split(8, hold_out_val=False)
    assert len(honest.unlabeled) == 64 and len(paper.unlabeled) == 72
    assert set(paper.unlabeled) == set(honest.unlabeled) | set(honest.val)
    assert paper.val == honest.val


def test_la_split_fully_supervised_upper_bound():
    assert la_split(72).unlabeled == []
    assert len(la_split(80, hold_out_val=False).labeled) == 80
    assert la_split(80, hold_out_val=False).unlabeled == []


@pytest.mark.parametrize("labelnum", [0, -1, 81])
def test_la_split_rejects_out_of_range_labelnum(labelnum):
    with pytest.raises(ValueError, match="--labelnum"):
        la_split(labelnum)


def test_la_split_refuses_to_label_validation_cases():
    with pytest.raises(ValueError, match=r"--labelnum 73 .*val\.list"):
        la_split(73)


@pytest.mark.parametrize("labelnum", [8, 6])
def test_la_split_tells_the_true_limit_at_once_with_the_flags(labelnum, tmp_path):
    """6 listed cases, the last held out for validation: 8 and 6 get the same answer, 1..5, naming --select."""
    (tmp_path / "train.list").write_text("a\nb\nc\nd\ne\nv\n")
    (tmp_path / "val.list").write_text("v\n")
    (tmp_path / "test.list").write_text("t\n")
    with pytest.raises(ValueError, match=rf"--labelnum {labelnum} out of range: .*train\.list lists 6 cases and "
                                         r"case 6 \(v\) is a validation case .*--select val; choose --labelnum "
                                         r"1\.\.5, or --select last"):
        la_split(labelnum, lists_dir=tmp_path)
    assert len(la_split(5, lists_dir=tmp_path).labeled) == 5
    assert len(la_split(6, hold_out_val=False, lists_dir=tmp_path).labeled) == 6
    with pytest.raises(ValueError, match=r"lists 6 cases; choose --labelnum 1\.\.6"):
        la_split(7, hold_out_val=False, lists_dir=tmp_path)


def test_la_split_reads_other_lists_dir(tmp_path):
    (tmp_path / "train.list").write_text("a\nb\nc\nd\n")
    (tmp_path / "val.list").write_text("d\n")
    (tmp_path / "test.list").write_text("t\n")
    split = la_split(2, lists_dir=tmp_path)
    assert split.to_dict() == {"labeled": ["a", "b"], "unlabeled": ["c"], "val": ["d"], "test": ["t"]}
    assert isinstance(split, Split)


def test_acdc_lists_sizes_and_patient_disjointness():
    slices = read_list(SPLITS_DIR / "ACDC" / "train_slices.list")
    train, val, test = (read_list(SPLITS_DIR / "ACDC" / f"{n}.list") for n in ("train", "val", "test"))
    assert (len(slices), len(train), len(val), len(test)) == (1312, 140, 20, 40)
    patients = [{patient_of(name) for name in ids} for ids in (train, val, test)]
    assert [len(p) for p in patients] == [70, 10, 20]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert {patient_of(name) for name in slices} == patients[0]


def test_patients_to_slices_matches_official_table():
    slices = read_list(SPLITS_DIR / "ACDC" / "train_slices.list")
    table = {3: 68, 7: 136, 14: 256, 21: 396, 28: 512, 35: 664, 70: 1312}
    assert {n: patients_to_slices(n, slices) for n in table} == table


@pytest.mark.parametrize("patients, n_slices", [(3, 68), (7, 136)])
def test_acdc_split_cuts_on_patient_boundaries(patients, n_slices):
    split = acdc_split(patients)
    assert len(split.labeled) == n_slices and len(split.labeled) + len(split.unlabeled) == 1312
    labeled_patients = {patient_of(s) for s in split.labeled}
    assert len(labeled_patients) == patients
    assert not labeled_patients & {patient_of(s) for s in split.unlabeled}
    assert (len(split.val), len(split.test)) == (20, 40)


def test_acdc_three_patients_are_099_038_050():
    labeled = acdc_split(3).labeled
    assert list(dict.fromkeys(patient_of(s) for s in labeled)) == ["patient099", "patient038", "patient050"]


@pytest.mark.parametrize("patients", [0, 71])
def test_acdc_split_rejects_out_of_range(patients):
    with pytest.raises(ValueError, match="--labelnum"):
        acdc_split(patients)


def test_patients_to_slices_rejects_ungrouped_list():
    with pytest.raises(ValueError, match="grouped by patient"):
        patients_to_slices(1, ["patient001_a", "patient002_a", "patient001_b"])
