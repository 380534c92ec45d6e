"""README command 1 on a short schedule: synthetic data, both methods trained and tested, table and pictures."""
from __future__ import annotations

import pytest

import demo
import evaluation
from dataloaders import make_synthetic_la
from training import make_config, train
from viz.io import png_size


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    code = demo.main(["--out", str(tmp_path), "--iterations", "8", "--unlabeled", "3", "--test_cases", "2",
                      "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "ss_net" in out and "Dice (%)" in out
    for method in ("supervised", "ss_net"):
        run = tmp_path / f"{method}_2_labeled_8it_seed1337"
        assert (run / "best_model.pth").is_file() and (run / "test_test" / "metrics.csv").is_file()
    # the same demo again reuses the finished runs instead of training them again
    assert demo.main(["--out", str(tmp_path), "--iterations", "8", "--unlabeled", "3", "--test_cases", "2",
                      "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("reused") == 2
    assert (tmp_path / "figures" / "curves.png").is_file() and (tmp_path / "figures" / "test_cases.png").is_file()


def test_the_demo_draws_its_pictures_of_a_tiny_run(tmp_path, capsys):
    """demo.write_figures on two tiny runs (2 iterations, 1 test case): the curves of both and the test montage
    exist as PNGs of the figures' size, and the demo's closing lines name them and what to try next."""
    data = make_synthetic_la(tmp_path / "data", n_train=4, n_test=1, shape=(24, 24, 20), seed=0, n_val=1)
    run_dirs = {}
    for method in ("supervised", "ss_net"):
        config = make_config("LA", root_path=str(data), lists_dir=str(data), method=method, labelnum=2,
                             max_iteration=2, patch_size=[16, 16, 16], network_kwargs={"base_filters": 2},
                             stride=[8, 8, 8], eval_every=1, eval_start=1, num_workers=0, device="cpu",
                             progress=False, image_every=0, run_dir=str(tmp_path / method))
        trained = train(config)
        evaluation.run_test(evaluation.TestOptions(dataset="LA", checkpoint=str(trained.best_checkpoint),
                                                   root_path=str(data), list_path=str(data / "test.list"), device="cpu",
                                                   progress=False, output_dir=str(tmp_path / method / demo.TEST_FOLDER),
                                                   save_predictions=True))
        run_dirs[method] = tmp_path / method
    figures = demo.write_figures(tmp_path, data, run_dirs)
    assert set(figures) == {"curves", "test_cases"}
    for path in figures.values():
        assert path.parent == tmp_path / "figures" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = png_size(path)
        assert width > 300 and height > 150
    demo.print_next_steps(figures, tmp_path)
    out = capsys.readouterr().out
    assert str(figures["curves"]) in out and str(figures["test_cases"]) in out
    assert "reproduce.py --dataset LA --dry-run" in out and "docs/data.md#a-subset-of-the-cases" in out
