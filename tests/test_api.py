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
