"""Two-moons toy study: a four-layer MLP trained with labels only vs. with SS-Net's two ideas transferred.

The paper (Fig. 1) trains a four-layer MLP on a synthetic two-moons set and shows with t-SNE that with fewer
labels and fuzzier data (larger noise gamma) the deep features of the two classes run into each other. Here
the same set-up is trained two ways:

* supervised: cross-entropy on the few labeled points;
* ss_net: the same + w(t) [LDS + separation_weight (SEP labeled + SEP unlabeled)], i.e. SS-Net's
  VAT-style smoothness on every point (utils.losses.vat_lds_loss) and its
  prototype class separation of the deep features (utils.losses.class_separation_loss against a
  utils.prototype_memory.PrototypeMemory of correctly classified labeled features; pseudo-labels on the
  unlabeled points). Both classes are "foreground" here: there is no background class to leave out.

The LDS discrepancy defaults to VAT's KL divergence: a point classifier has no regions whose overlap a
Dice could measure, and with SS-Net's pooled Dice discrepancy the toy model does no better than the supervised
one (measured: 0.85 vs 0.86 test accuracy at 10 labels, gamma 0.1; KL: 0.998). `discrepancy="pooled_dice"`
selects SS-Net's choice.

Everything is seeded; one model trains in about a second on a CPU core.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_moons
from torch import Tensor, nn

from utils.errors import UserError
from utils.losses import class_separation_loss, pooled_dice_discrepancy, vat_lds_loss
from utils.prototype_memory import PrototypeMemory
from utils.ramps import sigmoid_rampup

TOY_METHODS = ("supervised", "ss_net")
NUM_CLASSES = 2


def kl_discrepancy(probs_hat: Tensor, probs: Tensor, eps: float = 1e-8) -> Tensor:
    """VAT's KL(p || p_hat) averaged over points; probs (N, K) is the clean target."""
    return (probs * (torch.log(probs + eps) - torch.log(probs_hat + eps))).sum(1).mean()


TOY_DISCREPANCIES = {"kl": kl_discrepancy, "pooled_dice": pooled_dice_discrepancy}


@dataclass
class MoonsData:
    labeled_x: np.ndarray  # (L, 2) float32
    labeled_y: np.ndarray  # (L,) int64, balanced
    unlabeled_x: np.ndarray  # (U, 2)
    test_x: np.ndarray  # (T, 2)
    test_y: np.ndarray  # (T,)
    gamma: float


def make_two_moons(n_labeled: int, gamma: float, *, n_unlabeled: int = 1000, n_test: int = 1000,
                   seed: int = 0) -> MoonsData:
    """Two moons with Gaussian noise of standard deviation `gamma`; n_labeled/2 labels per class.

    The labeled points are drawn from the training pool, the rest of the pool is the unlabeled set; the test
    set is drawn independently.
    """
    if n_labeled < 2 or n_labeled % 2:
        raise UserError(f"n_labeled must be an even number >= 2 (half per class), got {n_labeled}")
    if gamma < 0:
        raise UserError(f"gamma (noise) must be >= 0, got {gamma}")
    rng = np.random.default_rng(seed)
    pool_x, pool_y = make_moons(n_labeled + n_unlabeled, noise=gamma, random_state=int(rng.integers(2**31)))
    test_x, test_y = make_moons(n_test, noise=gamma, random_state=int(rng.integers(2**31)))
    labeled = np.concatenate([rng.choice(np.flatnonzero(pool_y == c), n_labeled // 2, replace=False)
                              for c in range(NUM_CLASSES)])
    unlabeled = np.setdiff1d(np.arange(len(pool_y)), labeled)
    return MoonsData(pool_x[labeled].astype(np.float32), pool_y[labeled].astype(np.int64),
                     pool_x[unlabeled].astype(np.float32), test_x.astype(np.float32), test_y.astype(np.int64), gamma)


class MoonsMLP(nn.Module):
    """Four linear layers 2 -> h -> h -> h -> 2; `forward` returns (logits, deep features (B, h)).

    The per-class selectors of SS-Net (a linear score per feature / prototype) are part of the module so that
    the optimiser trains them, as in the segmentation networks.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, NUM_CLASSES)
        self.feature_selectors = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(NUM_CLASSES))
        self.memory_selectors = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(NUM_CLASSES))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return self.classifier(features), features

    def feature_selector(self, c: int) -> nn.Module:
        return self.feature_selectors[c]

    def memory_selector(self, c: int) -> nn.Module:
        return self.memory_selectors[c]


@dataclass
class ToySettings:
    iterations: int = 800
    lr: float = 0.01  # Adam
    hidden: int = 32
    consistency: float = 1.0  # max ramp weight w
    rampup_iterations: int = 200
    xi: float = 0.1  # VAT probe step, in data units (the moons have radius 1)
    magnitude: float = 0.2  # adversarial radius (the paper's epsilon), in data units
    discrepancy: str = "kl"  # or "pooled_dice" (SS-Net's LA choice)
    separation_weight: float = 0.1  # as SS-Net
    memory_size: int = 32
    memory_keep: str = "highest"  # the paper's wording (the official code's "lowest" is a quirk of images)

    def to_dict(self) -> dict:
        return asdict(self)


def train_moons(data: MoonsData, method: str, settings: ToySettings | None = None, seed: int = 0) -> MoonsMLP:
    """Full-batch training (all labeled + all unlabeled points every step); returns the model in eval mode."""
    if method not in TOY_METHODS:
        raise UserError(f"unknown toy method {method!r}; choose from: {', '.join(TOY_METHODS)}")
    s = settings or ToySettings()
    if s.discrepancy not in TOY_DISCREPANCIES:
        raise UserError(f"unknown discrepancy {s.discrepancy!r}; choose from: {', '.join(TOY_DISCREPANCIES)}")
    torch.manual_seed(seed)
    model = MoonsMLP(s.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    labeled_x, labeled_y = torch.from_numpy(data.labeled_x), torch.from_numpy(data.labeled_y)
    all_x = torch.cat([labeled_x, torch.from_numpy(data.unlabeled_x)])
    memory = PrototypeMemory(NUM_CLASSES, s.memory_size, s.memory_keep)
    n_labeled = len(labeled_y)
    model.train()
    for iteration in range(1, s.iterations + 1):
        if method == "supervised":
            logits, _ = model(labeled_x)
            loss = F.cross_entropy(logits, labeled_y)
        else:
            logits, features = model(all_x)
            loss = F.cross_entropy(logits[:n_labeled], labeled_y)
            with torch.no_grad():  # prototypes: correctly classified labeled features
                correct = logits[:n_labeled].argmax(1) == labeled_y
                memory.update(features[:n_labeled][correct].detach(), labeled_y[correct],
                              lambda c, f: torch.sigmoid(model.feature_selector(c)(f)))
            pseudo_labels = logits[n_labeled:].detach().argmax(1)
            separation = sum(
                class_separation_loss(f, y, memory.prototypes, model.feature_selector, model.memory_selector)
                for f, y in ((features[:n_labeled], labeled_y), (features[n_labeled:], pseudo_labels))
            )
            lds = vat_lds_loss(model, all_x, TOY_DISCREPANCIES[s.discrepancy], xi=s.xi, magnitude=s.magnitude)
            weight = s.consistency * sigmoid_rampup(iteration, s.rampup_iterations)
            loss = loss + weight * (lds + s.separation_weight * separation)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict_probs(model: MoonsMLP, x: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (N,) probability of class 1."""
    return torch.softmax(model(torch.from_numpy(np.asarray(x, np.float32)))[0], 1)[:, 1].numpy()


@torch.no_grad()
def deep_features(model: MoonsMLP, x: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (N, hidden) features feeding the classifier (what the paper's t-SNE shows)."""
    return model(torch.from_numpy(np.asarray(x, np.float32)))[1].numpy()


def accuracy(model: MoonsMLP, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((predict_probs(model, x) > 0.5) == y))
