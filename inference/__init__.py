"""Inference: one path from a checkpoint (or a live network) to label maps, for the test scripts, predict.py,
the figures, in-training evaluation and the reproduction grid.

    predictor = Predictor.from_checkpoint("best_model.pth", device="cuda")
    labels = predictor.predict_stored(image)   # a stored LA / ACDC / NIfTI-dataset array -> uint8 labels
    labels = predictor.predict_scan(scan)      # a NIfTI scan -> labels on the scan's own grid
"""
from .predictor import Predictor
from .settings import InferenceSettings

__all__ = ["InferenceSettings", "Predictor"]
