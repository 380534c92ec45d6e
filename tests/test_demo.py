"""README command 1 on a short schedule: synthetic data, both methods trained and tested, table printed."""
from __future__ import annotations

import pytest

import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    code = demo.main(["--out", str(tmp_path), "--iterations", "8", "--unlabeled", "3", "--test_cases", "2",
                      "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "ss_net" in out and "Dice (%)" in out
    for method in ("supervised", "ss_net"):
        assert (tmp_path / f"{method}_2_labeled" / "best_model.pth").is_file()
        assert (tmp_path / f"{method}_2_labeled" / "test" / "metrics.csv").is_file()
