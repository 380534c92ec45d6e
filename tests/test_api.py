"""The documented Python API (docs/architecture.md): network, method, config, training, predictor, metrics."""
from __future__ import annotations

import torch

from dataloaders import make_synthetic_la, read_list
from inference import Predictor
from methods import Batch, StepContext, build_method
from networks import build_network
from training import make_config, train
from utils.metrics import case_metrics


def test_network_and_method_from_python():
    network = build_network("vnet", num_classes=2, base_filters=4)
    config = make_config("LA", method="ss_net")  # a TrainConfig is the method's settings
    method = build_method(config.method, network, config)
    images = torch.randn(4, 1, 16, 16, 16)
    labels = (images[:2, 0] > 0).long()
    output = method(Batch(images[:2], labels), Batch(images[2:], None), StepContext(1))
    output.loss.backward()
    assert set(output.terms) >= {"total", "dice", "lds", "separation_labeled"}
    assert "consistency_weight" in output.monitors
    names = [n for n, _ in method.trained_parameters()]
    assert names[: len(list(network.parameters()))] == [n for n, _ in network.named_parameters()]
    assert any(n.startswith("projection_head.") for n in names)  # SS-Net trains its heads with the network


def test_train_predict_and_score_from_python(tmp_path):
    root = make_synthetic_la(tmp_path / "data", n_train=4, n_test=1, shape=(24, 24, 20), seed=0, n_val=1)
    config = make_config("LA", root_path=str(root), lists_dir=str(root), labelnum=2, max_iteration=2,
                         patch_size=[16, 16, 16], network_kwargs={"base_filters": 2}, stride=[8, 8, 8],
                         eval_every=1, eval_start=1, num_workers=0, device="cpu", progress=False, image_every=0,
                         run_dir=str(tmp_path / "run"))
    result = train(config)
    assert result.best_checkpoint.is_file() and len(result.losses) == 2
    predictor = Predictor.from_checkpoint(result.best_checkpoint, device="cpu")
    assert predictor.dataset.name == "LA" and predictor.settings.stride == (8, 8, 8)
    case = read_list(root / "test.list")[0]
    image, label = predictor.dataset.load_case(root, case)
    labels = predictor.predict_stored(image)
    assert labels.shape == image.shape and labels.dtype.name == "uint8"
    rows = case_metrics(labels, label, [1])
    assert {"class", "dice", "jaccard", "hd95", "asd", "assd", "empty_pred"} <= set(rows[0])


OUTSIDE_SCRIPT = """
import sys
import numpy as np
from dataloaders.nifti import Scan, read_scan
from inference import Predictor
from inference.nifti import write_labels_nifti

predictor = Predictor.from_checkpoint(sys.argv[1], device="cpu")
array = np.random.default_rng(0).random((1, 30, 26, 20), dtype=np.float32)
scan = Scan(image=array, spacing=(1.0, 1.0, 1.0), affine=np.diag([1.0, 1.0, 1.0, 1.0]), header=None)
labels = predictor.predict_scan(scan)
write_labels_nifti("case.nii.gz", labels, affine=scan.affine)
again = read_scan(["case.nii.gz"])
print("labels", labels.shape, labels.dtype, again.image.shape)
"""


def test_the_python_api_from_outside_the_checkout(tmp_path):
    """docs/architecture.md: a script in another folder imports the toolkit with PYTHONPATH=<checkout>, makes a
    Scan from an array, predicts it on its grid and writes it as NIfTI (read back by read_scan)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = make_synthetic_la(tmp_path / "data", n_train=4, n_test=1, shape=(24, 24, 20), seed=0, n_val=1)
    config = make_config("LA", root_path=str(root), lists_dir=str(root), labelnum=2, max_iteration=1,
                         patch_size=[16, 16, 16], network_kwargs={"base_filters": 2}, stride=[8, 8, 8],
                         eval_every=1, eval_start=1, num_workers=0, device="cpu", progress=False, image_every=0,
                         run_dir=str(tmp_path / "run"))
    checkpoint = train(config).best_checkpoint
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "my_script.py").write_text(OUTSIDE_SCRIPT)
    checkout = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bare = subprocess.run([sys.executable, "my_script.py", str(checkpoint)], cwd=outside, env=env,
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "No module named" in bare.stderr  # what the docs warn about
    done = subprocess.run([sys.executable, "my_script.py", str(checkpoint)], cwd=outside,
                          env={**env, "PYTHONPATH": checkout}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "labels (30, 26, 20) uint8 (1, 30, 26, 20)" in done.stdout
    assert (outside / "case.nii.gz").is_file()


def test_a_checkpoint_file_is_read_once_to_build_a_predictor(tmp_path, monkeypatch):
    from networks.loading import save_checkpoint

    path = tmp_path / "model.pth"
    save_checkpoint(path, build_network("vnet", num_classes=2, base_filters=2), dataset="LA", num_classes=2)
    reads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    predictor = Predictor.from_checkpoint(path, expect_dataset="LA")
    assert reads == [path] and predictor.network.num_classes == 2
