"""Shared fixtures: small real LA / ACDC subsets restored from ../shared/data into a cache.

A user's fresh clone has no ../shared; tests that need real data then skip with the reason.
The cache lives in `.test_cache/` (git-ignored) or wherever SSNET_TEST_CACHE points.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSNET_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SSNET_TEST_CACHE", REPO / ".test_cache"))


def _restore(dataset: str, limit: int) -> Path:
    restore = SHARED_DATA / "restore.py"
    if not restore.is_file():
        pytest.skip(f"real-data test: {restore} not found (no bundled benchmark copy; set SSNET_SHARED_DATA)")
    out = CACHE / f"{dataset.lower()}_limit{limit}"
    done = out / ".complete"
    if not done.exists():
        cmd = [sys.executable, str(restore), str(out), "--dataset", dataset, "--limit", str(limit)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"restoring {dataset} failed: {proc.stderr.strip()}")
        done.write_text("ok\n")
    return out / dataset


@pytest.fixture(scope="session")
def la_root() -> Path:
    """Folder holding `2018LA_Seg_Training Set/` with the first 4 train and 4 test LA cases."""
    return _restore("LA", 4)


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """Folder holding `data/` with 4 val, 4 test and 4 training ACDC volumes (2 patients; their slices)."""
    return _restore("ACDC", 4)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Some scripts set torch's thread count; results (and bitwise resume checks) depend on it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
