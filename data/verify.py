"""Check an LA or ACDC data folder against data/MANIFEST.sha256 (hash of the image then label arrays).

    python -m data.verify /data/LA            # the folder holding '2018LA_Seg_Training Set/'
    python -m data.verify /data/ACDC          # the folder holding 'data/'
    python -m data.verify /data/LA --complete # also fail when cases are missing
    python -m data.verify /data/LA --write_lists lists/LA   # and write split lists of the cases present

    python -m data.verify /data/ACDC          # after python -m data.prepare_acdc RELEASE /data/ACDC

Every array is hashed as stored (dtype and bytes, not the h5 container) and compared with the manifest; the report
names each case (an LA scan, an ACDC volume with its slices) that differs and how many of its files do.
Exit code 0 when every present case matches (and, with --complete, none is missing), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.lists import refuse_shipped_lists, write_lists
from data.prepare_acdc import CONVERSION_RECORD
from dataloaders.manifest import LA_FOLDER, MANIFEST, read_manifest, verify_folder
from utils.cli import ScriptParser, run_cli


def detect_dataset(root: Path) -> str:
    if (root / LA_FOLDER).is_dir():
        return "LA"
    if (root / "data").is_dir():
        return "ACDC"
    raise FileNotFoundError(f"{root} holds neither '{LA_FOLDER}/' (LA) nor 'data/' (ACDC); pass the dataset root")


def case_of(key: str) -> str:
    """Manifest key -> the case it belongs to (an ACDC slice belongs to its volume)."""
    return key.split("_slice_")[0]


def differing_cases(report: dict[str, list[str]]) -> list[str]:
    """One line per case with a differing file: 'ACDC/patient003_frame01 (slices 2, 5 of 10 differ)'."""
    files: dict[str, list[str]] = {}
    for status in ("ok", "bad", "missing"):
        for key in report[status]:
            files.setdefault(case_of(key), []).append(key)
    bad = set(report["bad"])
    lines = []
    for case, keys in sorted(files.items()):
        differing = [k for k in keys if k in bad]
        if not differing:
            continue
        if keys == [case]:
            lines.append(f"{case} (image or label)")
        else:
            numbers = sorted(int(k.rsplit("_slice_", 1)[1]) for k in differing)
            lines.append(f"{case} (slice{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))} "
                         f"of {len(keys)} differ{'' if len(numbers) > 1 else 's'})")
    return lines


def repair_command(root: Path, dataset: str) -> str:
    record = root / CONVERSION_RECORD
    if record.is_file():
        try:
            release = json.loads(record.read_text())["release"]
        except (ValueError, KeyError):
            release = "RELEASE"
        return (f"convert again with this version of the repository: python -m data.prepare_acdc {release} {root} "
                f"(a release other than the challenge's official NIfTI files gives other arrays)")
    return f"re-download them: python -m data.download {dataset.lower()} {root}"


def verify(root: str | Path, dataset: str = "", manifest: str | Path = MANIFEST, complete: bool = False,
           lists_out: str | Path = "") -> bool:
    root = Path(root)
    if lists_out:
        refuse_shipped_lists(Path(lists_out))
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    dataset = dataset.upper() if dataset else detect_dataset(root)
    report = verify_folder(root, dataset, read_manifest(manifest))
    total = sum(len(v) for v in report.values())
    print(f"{dataset} at {root}: {len(report['ok'])} ok, {len(report['bad'])} corrupt, "
          f"{len(report['missing'])} missing of {total} cases in the manifest")
    for line in differing_cases(report):
        print(f"differs: {line}")
    if report["bad"]:
        print(f"to repair: {repair_command(root, dataset)}")
    if report["bad"] or (complete and report["missing"]):
        return False
    if not report["ok"]:
        raise FileNotFoundError(f"no {dataset} case found under {root}; is this the dataset root?")
    if lists_out:
        write_lists(dataset, root, lists_out)
    elif report["missing"]:
        print(f"to train or test on the cases present: python -m data.lists {dataset.lower()} {root} --out DIR, "
              f"then --lists_dir DIR (docs/data.md#a-subset-of-the-cases)")
    return True


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset root")
    p.add_argument("--dataset", choices=("la", "acdc", "LA", "ACDC"), default="", help="default: detected")
    p.add_argument("--manifest", default=str(MANIFEST))
    p.add_argument("--complete", action="store_true", help="fail when manifest cases are missing")
    p.add_argument("--write_lists", default="", metavar="DIR",
                   help="when every present case matches, write split lists of them to DIR (python -m data.lists)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    result = {}
    code = run_cli(lambda: result.setdefault("ok", verify(args.root, args.dataset, args.manifest, args.complete,
                                                          args.write_lists)),
                   debug=args.debug)
    return code if code else (0 if result["ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
