"""Compare BCP's pieces (methods/bcp.py) with the official BCP functions, in float64, and print the differences.

Needs a clone of the official repository and scikit-image (which the official code imports; not a dependency of
this project). The official functions are taken from the clone at run time, nothing of them is copied here:
`code/utils/BCP_utils.py` and `code/utils/losses.py` are imported; the helpers that live inside the training scripts
(`get_cut_mask`, `LargestCC_pancreas` of LA_BCP_train.py; `generate_mask`, `mix_loss`, `get_ACDC_masks`,
`get_ACDC_2DLargestCC`, `update_model_ema` of ACDC_BCP_train.py) are compiled from the scripts' own function
definitions (the scripts parse arguments and open writers at import, so they cannot be imported whole).

    git clone https://github.com/DeepMed-Lab-ECNU/BCP /tmp/BCP          # snapshot compared: 7879f98
    pip install --target /tmp/skenv scikit-image                          # only for this comparison
    PYTHONPATH=/tmp/skenv python -m benchmarks.official_bcp --official /tmp/BCP

Compared, for LA (3-D, 112 x 112 x 80 crops: the official mask hard-codes that size) and ACDC (2-D): the cuboid mask
from the same draw (the official code draws with NumPy's global generator; ours is given the corner those draws
give), the pasted images and labels (the scripts' statements), the copy-paste loss (`mix_loss`) in both directions
and the pre-train losses, the pseudo labels with the largest connected component, and the EMA update. Every line
prints the largest absolute difference; "to rounding" means about 1e-15 or less in float64, and masks and labels
must be equal.
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.bcp import copy_paste, copy_paste_loss, cuboid_keep_mask, pseudo_labels
from methods.ema import ema_update_constant
from networks import build_network
from utils.losses import masked_dice_loss


def load_module(path: Path, name: str):
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; --official must name a clone of "
                         f"github.com/DeepMed-Lab-ECNU/BCP")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def official_imports(code: Path):
    """The official `utils` package in place of ours while its modules import (`from utils.losses import ...`), and
    `.cuda()` as the identity on a machine without a GPU."""
    saved = {k: v for k, v in sys.modules.items() if k == "utils" or k.startswith("utils.")}
    for key in saved:
        del sys.modules[key]
    package = types.ModuleType("utils")
    package.__path__ = [str(code / "utils")]
    sys.modules["utils"] = package
    original_cuda = torch.Tensor.cuda
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        for key in [k for k in sys.modules if k == "utils" or k.startswith("utils.")]:
            del sys.modules[key]
        sys.modules.update(saved)
        torch.Tensor.cuda = original_cuda


def script_functions(path: Path, names: list[str], namespace: dict) -> dict:
    """The named top-level functions of an official training script, compiled from its own source."""
    tree = ast.parse(path.read_text())
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in found}
    if missing:
        raise SystemExit(f"error: {path} has no function {', '.join(sorted(missing))} (another BCP version?)")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def max_abs(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max()) if a.numel() else 0.0


def report(name: str, difference: float, exact: bool = False) -> bool:
    ok = difference == 0.0 if exact else difference <= 1e-12
    print(f"  {name:58s} max |diff| = {difference:.3g}  {'equal' if exact and ok else 'ok' if ok else 'DIFFERS'}")
    return ok


def smooth_logits(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """float64 logits with blobs (several connected components per class), for the pseudo labels."""
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    spatial = len(shape) - 2
    pool = F.avg_pool3d if spatial == 3 else F.avg_pool2d
    return pool(logits, kernel_size=5, stride=1, padding=2) * 8


def compare(root: Path, seed: int) -> bool:
    code = root / "code"
    with official_imports(code):
        losses = load_module(code / "utils" / "losses.py", "utils.losses")
        sys.modules["utils.losses"] = losses
        bcp_utils = load_module(code / "utils" / "BCP_utils.py", "official_bcp_utils")
        from skimage.measure import label

        namespace = {"np": np, "torch": torch, "F": F, "nn": nn, "label": label,
                     "dice_loss": losses.DiceLoss(n_classes=4)}
        la = script_functions(code / "LA_BCP_train.py", ["get_cut_mask", "LargestCC_pancreas"], dict(namespace))
        acdc = script_functions(code / "ACDC_BCP_train.py", ["generate_mask", "mix_loss", "get_ACDC_masks",
                                                             "get_ACDC_2DLargestCC", "update_model_ema"],
                                dict(namespace))
        return compare_la(bcp_utils, la, seed) & compare_acdc(acdc, seed)


def draw_corner(shape: tuple[int, ...], seed: int) -> tuple[int, ...]:
    """The corner NumPy's global generator gives the official mask after np.random.seed(seed): its draws in order."""
    rng = np.random.RandomState(seed)
    return tuple(int(rng.randint(0, size - int(size * 2 / 3))) for size in shape)


def compare_la(official, script: dict, seed: int) -> bool:
    print("LA (3-D): BCP_utils.py, LA_BCP_train.py")
    g = torch.Generator().manual_seed(seed)
    shape, n = (112, 112, 80), 2
    ok = True
    images = [torch.randn(n, 1, *shape, generator=g, dtype=torch.float64) for _ in range(4)]
    labels = [torch.randint(0, 2, (n, *shape), generator=g) for _ in range(4)]
    np.random.seed(seed)
    img_mask, loss_mask = official.context_mask(images[0], 2 / 3)
    keep = cuboid_keep_mask(shape, draw_corner(shape, seed))
    ok &= report("cuboid mask, same draw (context_mask)", max_abs(img_mask, keep), exact=True)
    ok &= report("loss mask (context_mask)", max_abs(loss_mask, keep.expand(n, *shape)), exact=True)
    img_a, img_b, un_a, un_b = images
    lab_a, lab_b, plab_a, plab_b = labels
    ok &= report("pasted image: labeled a | unlabeled a (:248)",
                 max_abs(img_a * img_mask + un_a * (1 - img_mask), copy_paste(img_a, un_a, keep)))
    ok &= report("pasted label (:250)", max_abs(lab_a * img_mask + plab_a * (1 - img_mask),
                                                copy_paste(lab_a, plab_a, keep)), exact=True)
    logits = torch.randn(n, 2, *shape, generator=g, dtype=torch.float64)
    dice = {"per_sample": True, "squared": False, "smooth": 1e-5}
    for unlab, weights in ((False, (1.0, 0.5)), (True, (0.5, 1.0))):
        theirs = official.mix_loss(logits, lab_a, plab_a, loss_mask, u_weight=0.5, unlab=unlab)
        d, c = copy_paste_loss(logits, lab_a, plab_a, keep, *weights, **dice)
        ok &= report(f"mix_loss (unlab={unlab})", max_abs(theirs, (d + c) / 2))
    mixed = lab_a * img_mask + lab_b * (1 - img_mask)
    theirs = (F.cross_entropy(logits, mixed) + official.DICE(logits, mixed)) / 2  # pre-train loss (:159-161)
    ours = (F.cross_entropy(logits, mixed) + masked_dice_loss(torch.softmax(logits, 1), mixed,
                                                              torch.ones(n, *shape, dtype=torch.float64), **dice)) / 2
    ok &= report("pre-train loss (CE + Dice) / 2 (:159-161)", max_abs(theirs, ours))
    teacher_logits = smooth_logits((n, 2, 48, 48, 32), g)
    theirs = script["get_cut_mask"](teacher_logits, nms=1)
    ok &= report("pseudo labels p >= 0.5 + largest component (:243)",
                 max_abs(theirs, pseudo_labels(teacher_logits, 0.5)), exact=True)
    removed(teacher_logits, 0.5)
    ok &= compare_ema(lambda s, t: official.update_ema_variables(s, t, 0.99), buffers=False, dims=3, seed=seed)
    return ok


def compare_acdc(script: dict, seed: int) -> bool:
    print("ACDC (2-D): ACDC_BCP_train.py")
    g = torch.Generator().manual_seed(seed + 1)
    shape, n = (256, 256), 6
    ok = True
    images = [torch.randn(n, 1, *shape, generator=g, dtype=torch.float64) for _ in range(4)]
    labels = [torch.randint(0, 4, (n, *shape), generator=g) for _ in range(4)]
    np.random.seed(seed)
    img_mask, loss_mask = script["generate_mask"](images[0])
    keep = cuboid_keep_mask(shape, draw_corner(shape, seed))
    ok &= report("square mask, same draw (generate_mask)", max_abs(img_mask, keep), exact=True)
    img_a, img_b, un_a, un_b = images
    lab_a, lab_b, plab_a, plab_b = labels
    ok &= report("pasted image: unlabeled a | labeled a (:372)",
                 max_abs(un_a * img_mask + img_a * (1 - img_mask), copy_paste(un_a, img_a, keep)))
    logits = torch.randn(n, 4, *shape, generator=g, dtype=torch.float64)
    dice = {"per_sample": False, "squared": True, "smooth": 1e-10}
    for unlab, u_weight, weights in ((True, 0.5, (0.5, 1.0)), (False, 0.5, (1.0, 0.5)), (True, 1.0, (1.0, 1.0))):
        theirs = script["mix_loss"](logits, plab_a, lab_a, loss_mask, u_weight=u_weight, unlab=unlab)
        ours = copy_paste_loss(logits, plab_a, lab_a, keep, *weights, **dice)
        what = "pre-train, weights 1/1 (:249)" if u_weight == 1.0 else f"unlab={unlab}"
        ok &= report(f"mix_loss Dice, {what}", max_abs(theirs[0], ours[0]))
        ok &= report(f"mix_loss CE, {what}", max_abs(theirs[1], ours[1]))
    teacher_logits = smooth_logits((n, 4, 64, 64), g)
    theirs = script["get_ACDC_masks"](teacher_logits, nms=1)
    ok &= report("pseudo labels argmax + largest component (:365)",
                 max_abs(theirs, pseudo_labels(teacher_logits, None)), exact=True)
    removed(teacher_logits, None)
    ok &= compare_ema(lambda s, t: script["update_model_ema"](s, t, 0.99), buffers=True, dims=2, seed=seed)
    return ok


def removed(logits: torch.Tensor, threshold: float | None) -> None:
    """How much the largest-component step changed: the comparison above is not of two untouched label maps."""
    before, after = pseudo_labels(logits, threshold, largest_component=False), pseudo_labels(logits, threshold)
    print(f"    (the largest component removed {int((before != after).sum()):,} of {before.numel():,} voxels)")


def compare_ema(official_update, buffers: bool, dims: int, seed: int) -> bool:
    torch.manual_seed(seed)
    name, kwargs, shape = ("vnet", {"num_classes": 2, "base_filters": 4}, (2, 1, 16, 16, 16)) if dims == 3 else \
        ("unet", {"num_classes": 4}, (2, 1, 32, 32))
    student = build_network(name, **kwargs).double().train()
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # different weights and BN statistics on both sides
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        student(torch.randn(shape, dtype=torch.float64))
        teacher(torch.randn(shape, dtype=torch.float64))
    theirs, ours = copy.deepcopy(teacher), copy.deepcopy(teacher)
    official_update(student, theirs)
    ema_update_constant(ours, student, 0.99, buffers=buffers)
    state_theirs, state_ours = theirs.state_dict(), ours.state_dict()
    worst = max(max_abs(state_theirs[k], state_ours[k]) for k in state_theirs)
    return report(f"EMA 0.99 ({'state dict, BN statistics too' if buffers else 'parameters only'})", worst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="clone of github.com/DeepMed-Lab-ECNU/BCP")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise SystemExit("error: the official code imports scikit-image; install it for this comparison only, "
                         "e.g. pip install --target /tmp/skenv scikit-image and PYTHONPATH=/tmp/skenv") from None
    ok = True
    for seed in args.seeds:
        print(f"seed {seed}")
        ok &= compare(args.official, seed)
    print("all equal to rounding" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
