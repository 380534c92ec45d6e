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
        run = tmp_path / f"{method}_2_labeled_8it_seed1337"
        assert (run / "best_model.pth").is_file() and (run / "test" / "metrics.csv").is_file()
    # the same demo again reuses the finished runs instead of training them again
    assert demo.main(["--out", str(tmp_path), "--iterations", "8", "--unlabeled", "3", "--test_cases", "2",
                      "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("reused") == 2
