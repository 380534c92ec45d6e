"""Compare SS-Net training steps with the official code's own functions, in float64, and print the differences.

Needs a clone of the official repository; its modules (networks, VAT, prototype memory, contrastive loss, ramps)
are imported from there at run time, nothing of it is copied into this project:

    git clone https://github.com/ycwu1997/SS-Net /tmp/SS-Net        # snapshot compared: c0a8bf6
    python -m benchmarks.official_step --official /tmp/SS-Net --dataset LA
    python -m benchmarks.official_step --official /tmp/SS-Net --dataset ACDC --first_iteration 149
    python -m benchmarks.official_step --official /tmp/SS-Net --dataset LA --memory_weights learned

Both sides start from the same weights (the official network's, loaded into ours by name), see the same batch and
make the same random draws (the generator is seeded identically before each iteration). The official side runs the
statements of one iteration of `train_ss_3d.py` / `train_ss_2d.py` in their order with the official modules; ours
runs the SSNet method module (the memory-saving order of --low_memory 1 unless --low_memory 0) and the
trainer's optimizer step. After every iteration the script prints the largest
relative difference of each loss term, of the gradients and weights (per group of parameters), of the BatchNorm
statistics and of the prototype memory, and whether both generators are in the same state. Agreement "to rounding"
means float64 differences of about 1e-12 relative or less. One artefact of running the official code in float64:
its 2-D Dice (`softDiceLoss`, used by VAT2d) casts its target to float32 (`target.float()`) and so sums the clean
prediction's squares in float32; on ACDC the LDS term then differs by ~1e-6 relative (in fp32 training the cast
does nothing). The memory selectors' gradients are rounding noise (< 1e-18) in the official step and exactly 0 in
ours (the prototype weights are 1 in both).
"""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from dataloaders import get_dataset
from methods import Batch, StepContext, build_method
from networks import build_network, load_official_state_dict
from training.config import make_config
from training.optim import build_sgd, zero_gradients
from training.precision import Precision
from utils.cli import ScriptParser
from utils.ramps import step_learning_rate


def load_module(path: Path, name: str):
    """Import one file of the official code under a private name (its package names clash with ours)."""
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; --official must name a clone of github.com/ycwu1997/SS-Net")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def cuda_calls_stay_on_cpu():
    """The official loss moves the memory with `.cuda()`; without a GPU that call returns the tensor itself."""
    original = torch.Tensor.cuda
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


class Official:
    """One iteration of the official training scripts, statement order kept, with the official modules."""

    def __init__(self, root: Path, dataset: str, labeled_bs: int):
        code = root / "code"
        self.losses = load_module(code / "utils" / "losses.py", "official_losses")
        self.contrastive = load_module(code / "utils" / "contrastive_losses.py", "official_contrastive_losses")
        self.memory_module = load_module(code / "utils" / "feature_memory.py", "official_feature_memory")
        self.ramps = load_module(code / "utils" / "ramps.py", "official_ramps")
        self.dataset, self.labeled_bs = dataset, labeled_bs
        if dataset == "LA":
            vnet = load_module(code / "networks" / "VNet.py", "official_vnet")
            self.model = vnet.VNet(n_channels=1, n_classes=2, normalization="batchnorm", has_dropout=True)
            self.num_classes, self.vat = 2, self.losses.VAT3d(epi=10.0)  # train_ss_3d.py --magnitude
        else:
            unet = load_module(code / "networks" / "unet.py", "official_unet")
            self.model = unet.UNet(in_chns=1, class_num=4)
            self.num_classes, self.vat = 4, self.losses.VAT2d(epi=6.0)  # train_ss_2d.py --magnitude
            self.dice = self.losses.DiceLoss(n_classes=4)
        self.memory = self.memory_module.FeatureMemory(elements_per_class=32, n_classes=self.num_classes)
        self.config = make_config(dataset)

    def step(self, images, labels, optimizer, iteration: int) -> dict:
        """`iteration` is 1-based; the 3-D script increments its counter before w(t), the 2-D one after."""
        model, lbs, C = self.model, self.labeled_bs, self.num_classes
        model.train()
        outputs, embedding = model(images)
        outputs_soft = F.softmax(outputs, dim=1)
        labeled_features, unlabeled_features = embedding[:lbs], embedding[lbs:]
        y, true_labels = outputs_soft[:lbs], labels
        _, prediction_label = torch.max(y, dim=1)
        _, pseudo_label = torch.max(outputs_soft[lbs:], dim=1)
        correct = ((prediction_label == true_labels).float() * (prediction_label > 0).float()).bool()
        labeled_features = labeled_features.movedim(1, -1)
        labels_correct = true_labels[correct]
        with torch.no_grad():
            model.eval()
            projected_correct = model.projection_head(labeled_features[correct, ...])
            model.train()
        self.memory.add_features_from_sample_learned(model, projected_correct, labels_correct)
        labeled_all = labeled_features.reshape(-1, labeled_features.shape[-1])
        predicted_l = model.prediction_head(model.projection_head(labeled_all))
        cl_l = self.contrastive.contrastive_class_to_class_learned_memory(
            model, predicted_l, true_labels.reshape(-1), C, self.memory.memory)
        unlabeled_all = unlabeled_features.movedim(1, -1).reshape(-1, labeled_features.shape[-1])
        predicted_u = model.prediction_head(model.projection_head(unlabeled_all))
        cl_u = self.contrastive.contrastive_class_to_class_learned_memory(
            model, predicted_u, pseudo_label.reshape(-1), C, self.memory.memory)
        if self.dataset == "LA":
            dice = self.losses.Binary_dice_loss(y[:, 1, ...], (true_labels == 1))
        else:
            dice = self.dice(y, true_labels.unsqueeze(1))
        lds = self.vat(model, images)
        counter = iteration if self.dataset == "LA" else iteration - 1  # see the docstring
        weight = self.config.consistency * self.ramps.sigmoid_rampup(counter // 150, self.config.consistency_rampup)
        loss = dice + weight * (lds + 0.1 * (cl_l + cl_u))
        optimizer.zero_grad(set_to_none=False)  # PyTorch 1.8's zero_grad(), the official scripts' version
        loss.backward()
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        if self.dataset == "LA" and iteration % 2500 == 0:
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * 0.1 ** (iteration // 2500)
        terms = {"dice": dice, "lds": lds, "separation_labeled": cl_l, "separation_unlabeled": cl_u, "total": loss}
        return {"terms": {k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}, "grads": grads,
                "weight": weight}


class Ours:
    def __init__(self, dataset: str, official_state: dict, memory_weights: str):
        self.config = make_config(dataset, memory_weights=memory_weights)
        adapter = get_dataset(dataset)
        self.network = build_network(adapter.network, **adapter.network_kwargs)
        self.method = build_method("ss_net", self.network, self.config)
        # the official single state dict -> our network + SS-Net's heads (the key map of networks/loading.py)
        load_official_state_dict(self.network, official_state, self.method.heads)

    def step(self, images, labels, optimizer, iteration: int, labeled_bs: int, low_memory: bool) -> dict:
        self.method.train()
        zero_gradients(optimizer)  # before the loss: the memory-saving order backpropagates parts of it inside
        context = StepContext(iteration, backward=Precision("off").backward if low_memory else None)
        output = self.method(Batch(images[:labeled_bs], labels), Batch(images[labeled_bs:], None), context)
        output.loss.backward()
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in self.method.trained_parameters()}
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = step_learning_rate(iteration, 0.01, self.config.lr_step)
        keys = ("dice", "lds", "separation_labeled", "separation_unlabeled", "total")
        return {"terms": {k: float(output.terms[k]) for k in keys}, "grads": grads,
                "weight": float(output.monitors["consistency_weight"])}


def group_of(name: str) -> str:
    for prefix, group in (("encoder.", "backbone"), ("decoder.", "backbone"), ("projection_head.", "g"),
                          ("prediction_head.", "h"), ("contrastive_class_selector_memory", "S_mem"),
                          ("contrastive_class_selector_", "S")):
        if name.startswith(prefix):
            return group
    return "other"


def relative(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    scale = max(float(b.abs().max()), float(a.abs().max()), 1e-300)
    return float((a.double() - b.double()).abs().max()) / scale


def synthetic_batch(dataset: str, seed: int):
    """Half labeled, half unlabeled; blob labels so that part of the foreground is predicted correctly."""
    g = torch.Generator().manual_seed(seed)
    if dataset == "LA":
        shape, classes, labeled_bs = (4, 1, 32, 32, 32), 2, 2
    else:
        shape, classes, labeled_bs = (8, 1, 64, 64), 4, 4
    images = torch.randn(shape, generator=g, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape[2:]],
                                      indexing="ij"))
    radius = grid.square().sum(0).sqrt()
    labels = torch.zeros((labeled_bs, *shape[2:]), dtype=torch.long)
    for c in range(1, classes):  # rings: class c between radii 0.25 c and 0.25 (c + 1)
        labels[:, (radius >= 0.25 * (c - 1) + 0.1) & (radius < 0.25 * c + 0.1)] = c
    images[:labeled_bs] += labels.unsqueeze(1).to(torch.float64)
    return images, labels, labeled_bs


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, type=Path, help="clone of github.com/ycwu1997/SS-Net")
    p.add_argument("--dataset", choices=("LA", "ACDC"), default="LA")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--first_iteration", type=int, default=149,
                   help="1-based iteration of the first step (149: w(t) changes at 150; 2499: the LA LR at 2500)")
    p.add_argument("--memory_weights", default="ones", choices=("ones", "learned"), help="our setting to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low_memory", type=int, choices=(0, 1), default=1,
                   help="our step order: 1 = the memory-saving order (the trainer's default), 0 = one backward")
    args = p.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    images, labels, labeled_bs = synthetic_batch(args.dataset, args.seed)
    torch.manual_seed(args.seed)
    official = Official(args.official, args.dataset, labeled_bs)
    official.model.double()
    ours = Ours(args.dataset, official.model.state_dict(), args.memory_weights)
    ours.network.double()
    ours.method.heads.double()
    lr = step_learning_rate(args.first_iteration - 1, 0.01, ours.config.lr_step)
    opt_official = build_sgd(official.model.parameters(), lr=lr)
    opt_ours = build_sgd([p for _, p in ours.method.trained_parameters()], lr=lr)
    print(f"{args.dataset}: official {args.official} vs ours (memory_weights={args.memory_weights}), float64")
    worst = 0.0
    for iteration in range(args.first_iteration, args.first_iteration + args.iterations):
        torch.manual_seed(10_000 + iteration)
        with cuda_calls_stay_on_cpu():
            a = official.step(images, labels, opt_official, iteration)
        rng_official = torch.get_rng_state()
        torch.manual_seed(10_000 + iteration)
        b = ours.step(images, labels, opt_ours, iteration, labeled_bs, bool(args.low_memory))
        same_rng = torch.equal(rng_official, torch.get_rng_state())
        print(f"iteration {iteration}: w(t) official {a['weight']:.6g} ours {b['weight']:.6g}; "
              f"generators {'in the same state' if same_rng else 'DIFFER'}")
        for k, v in a["terms"].items():
            diff = abs(b["terms"][k] - v) / max(abs(v), 1e-300)
            worst = max(worst, diff) if k != "separation_labeled" or args.memory_weights == "ones" else worst
            print(f"  {k:22s} official {v:.12g}  ours {b['terms'][k]:.12g}  rel. diff {diff:.1e}")
        official_params = dict(official.model.named_parameters())
        official_buffers = dict(official.model.named_buffers())
        for kind, ours_values, official_values in (
            ("gradient", b["grads"], a["grads"]),
            ("weight", {n: p.detach() for n, p in ours.method.trained_parameters()},
             {n: p.detach() for n, p in official_params.items()}),
            ("BN statistic", {**dict(ours.network.named_buffers()), **dict(ours.method.heads.named_buffers())},
             official_buffers),
        ):
            # per group: largest |ours - official| over the group's largest |official| (a parameter's own scale
            # would make analytically-zero gradients, e.g. of conv biases before BatchNorm, look different)
            diff: dict[str, float] = {}
            scale: dict[str, float] = {}
            for name, value in official_values.items():
                g, mine = group_of(name), ours_values[name]
                if value is None or mine is None:
                    diff[g] = max(diff.get(g, 0.0), 0.0 if value is None and mine is None else float("inf"))
                    continue
                diff[g] = max(diff.get(g, 0.0), float((mine.double() - value.double()).abs().max()))
                scale[g] = max(scale.get(g, 0.0), float(value.double().abs().max()))
            print(f"  {kind:22s} " + "  ".join(f"{g} {diff[g] / max(scale.get(g, 0.0), 1e-300):.1e}"
                                                 + (f" (|official| <= {scale.get(g, 0.0):.0e})"
                                                    if scale.get(g, 1.0) < 1e-12 else "")
                                                 for g in sorted(diff)))
        memory = [relative(None if o is None else torch.as_tensor(o), m)
                  for o, m in zip(official.memory.memory, ours.method.memory.prototypes, strict=True)]
        print(f"  {'prototype memory':22s} " + "  ".join(f"class {c} {d:.1e}" for c, d in enumerate(memory)))
    print(f"largest relative difference of a loss term: {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
