"""Split lists for the cases present under a data root: train, validate and test on a subset.

    python -m data.lists la ./data/LA --out lists/LA        # train.list, val.list, test.list of the LA cases there
    python -m data.lists acdc ./data/ACDC --out lists/ACDC  # train_slices.list, train.list, val.list, test.list
    python train_la.py --root_path ./data/LA --lists_dir lists/LA --labelnum 2 ...
    python test_la.py --checkpoint RUN/best_model.pth --root_path ./data/LA --list lists/LA/test.list

Every list is the official one (data/splits/<dataset>/*.list, or --source) limited to the cases found under the root,
in the official order, so the first N training cases stay the labeled ones. LA validation: the present cases of
val.list (the last 8 of train.list); when none is present, the last --val present training cases (default: one
in ten, at least one), a tail of train.list as the official val.list is. A list with no present case is written
empty and named in the summary (an empty val.list needs --select last, an empty test.list leaves nothing to test).
"""
from __future__ import annotations

import sys
from pathlib import Path

from dataloaders.acdc import acdc_slice_path, acdc_volume_path
from dataloaders.datasets import count
from dataloaders.la import LA_FOLDER, la_case_path
from dataloaders.splits import SPLITS_DIR, patient_of, read_list
from utils.atomic import write_text_atomic
from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError

LIST_DATASETS = ("LA", "ACDC")


def la_lists(root: Path, source: Path, n_val: int | None = None) -> dict[str, list[str]]:
    train = [c for c in read_list(source / "train.list") if la_case_path(root, c).is_file()]
    test = [c for c in read_list(source / "test.list") if la_case_path(root, c).is_file()]
    if n_val is None:
        official = set(read_list(source / "val.list")) if (source / "val.list").is_file() else set()
        val = [c for c in train if c in official] or train[-max(1, len(train) // 10):]
    else:
        val = train[max(0, len(train) - n_val):] if n_val else []
    if train and len(train) <= len(val):
        raise UserError(f"{len(train)} LA training case(s) under {root} leave none to train on besides "
                        f"{len(val)} validation case(s); restore more training cases or pass --val 0 (then train "
                        f"with --select last)")
    return {"train.list": train, "val.list": val, "test.list": test}


def acdc_lists(root: Path, source: Path) -> dict[str, list[str]]:
    slices = [s for s in read_list(source / "train_slices.list") if acdc_slice_path(root, s).is_file()]
    with_slices = {s.split("_slice_")[0] for s in slices}
    train = [v for v in read_list(source / "train.list") if v in with_slices or acdc_volume_path(root, v).is_file()]
    present = {name: [v for v in read_list(source / name) if acdc_volume_path(root, v).is_file()]
               for name in ("val.list", "test.list")}
    return {"train_slices.list": slices, "train.list": train, **present}


def present_lists(dataset: str, root: str | Path, source: str | Path = "", n_val: int | None = None
                  ) -> dict[str, list[str]]:
    """{list file name: the ids of the official list found under `root`, in its order}."""
    dataset, root = dataset.upper(), Path(root)
    if dataset not in LIST_DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose la or acdc")
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    source = Path(source) if source else SPLITS_DIR / dataset
    if n_val is not None and (dataset != "LA" or n_val < 0):
        raise UserError("--val takes a number >= 0 and applies to LA only (ACDC's validation volumes are their own "
                        "list)")
    lists = la_lists(root, source, n_val) if dataset == "LA" else acdc_lists(root, source)
    training = "train.list" if dataset == "LA" else "train_slices.list"
    if not lists[training] and not lists["test.list"]:
        layout = f"'{LA_FOLDER}/<case>/mri_norm2.h5'" if dataset == "LA" else "'data/<volume>.h5', 'data/slices/'"
        raise FileNotFoundError(f"no {dataset} case of {source} found under {root}; it should hold {layout} "
                                f"(see docs/data.md)")
    return lists


def describe(dataset: str, lists: dict[str, list[str]]) -> list[str]:
    """One line per list: its size (ACDC slices also in patients) and what an empty one means."""
    lines = []
    for name, ids in lists.items():
        unit = "slice" if name == "train_slices.list" else ("volume" if dataset.upper() == "ACDC" else "case")
        size = count(len(ids), unit)
        if name == "train_slices.list":
            size += f" of {len({patient_of(s) for s in ids})} patients (--labelnum counts patients)"
        if name == "val.list" and dataset.upper() == "LA" and ids:
            size += " (the tail of train.list; held out of training under --select val)"
        if not ids:
            size += {"val.list": ": none present; train with --select last",
                     "test.list": ": none present; nothing to test"}.get(name, ": none present")
        lines.append(f"{name}: {size}")
    return lines


def refuse_shipped_lists(out: Path) -> None:
    """Lists of a subset never replace the shipped ones (a subset would silently become everyone's split)."""
    shipped = SPLITS_DIR.resolve()
    if out.resolve() == shipped or shipped in out.resolve().parents:
        raise UserError(f"--out / --write_lists {out} is inside {SPLITS_DIR}, the split lists shipped with this "
                        f"repository; write the lists of your cases to another folder (e.g. lists/<dataset>) and "
                        f"pass it as --lists_dir")


def write_lists(dataset: str, root: str | Path, out: str | Path, source: str | Path = "",
                n_val: int | None = None) -> dict[str, list[str]]:
    """Write the lists of the cases present under `root` into `out` and print what they hold."""
    out = Path(out)
    refuse_shipped_lists(out)
    lists = present_lists(dataset, root, source, n_val)
    for name, ids in lists.items():
        write_text_atomic(out / name, "".join(f"{i}\n" for i in ids))
    print(f"{dataset.upper()} lists of the cases under {root}, written to {out}/:", file=sys.stderr)
    for line in describe(dataset, lists):
        print(f"  {line}", file=sys.stderr)
    return lists


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("dataset", choices=("la", "acdc", "LA", "ACDC"))
    p.add_argument("root", help="dataset root (LA: holds '2018LA_Seg_Training Set/'; ACDC: holds 'data/')")
    p.add_argument("--out", required=True, help="folder for the lists (pass it as --lists_dir)")
    p.add_argument("--source", default="",
                   help="lists to restrict (default: data/splits/<dataset>/ of this repository)")
    p.add_argument("--val", type=int, default=None,
                   help="LA: the last N present training cases validate (default: the present cases of val.list, "
                        "else one in ten, at least one)")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    args = p.parse_args(argv)
    return run_cli(lambda: write_lists(args.dataset, args.root, args.out, args.source, args.val), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
