"""The published numbers (data/paper_results.json, with their sources) looked up by our method names."""
from __future__ import annotations

import json
from pathlib import Path

from dataloaders.splits import DATA_DIR

PAPER_RESULTS = DATA_DIR / "paper_results.json"

# Our registry names -> the row names of the paper's tables. A method absent here (or without a row for the
# budget) simply has no published number; a Method class may also carry `paper_name` itself.
PAPER_NAMES = {"ss_net": "SS-Net", "ua_mt": "UA-MT", "sassnet": "SASSNet", "dtc": "DTC", "urpc": "URPC",
               "mc_net": "MC-Net"}
BACKBONES = {"LA": "V-Net", "ACDC": "U-Net"}  # the lower / upper bound rows are named after the backbone
ALL_LABELS_KEY = {"LA": "80", "ACDC": "70"}  # the published upper bound uses every training label


def load_paper_results(path: str | Path = PAPER_RESULTS) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published numbers {path} not found; it ships with the repository (data/)")
    return json.loads(path.read_text())


def paper_row_name(dataset: str, method: str, budget: str) -> str | None:
    """Row of the paper's table for our (method, budget): the backbone for supervised, else the method's name."""
    if method == "supervised":
        return BACKBONES.get(dataset)
    if budget == "all":
        return None
    from methods import METHODS

    cls = METHODS.get(method)
    return getattr(cls, "paper_name", None) or PAPER_NAMES.get(method)


def paper_entry(published: dict, dataset: str, method: str, budget: str) -> dict | None:
    """{dice, jaccard, hd95, asd (Dice/Jaccard in %), role, source, verified, ...} or None when not published."""
    name = paper_row_name(dataset, method, budget)
    key = ALL_LABELS_KEY.get(dataset) if budget == "all" else str(budget)
    entry = published.get(dataset, {}).get(key, {}).get(name) if name and key else None
    if entry is None:
        return None
    role_expected = "upper_bound" if budget == "all" else ("lower_bound" if method == "supervised" else "method")
    return entry if entry.get("role") == role_expected else None
