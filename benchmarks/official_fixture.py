"""Pin SS-Net's training step to the official code: compute tests/data/official_ssnet_step.json from the official
functions, once; tests/test_official_fixture.py runs this project's step from the same start and compares.

Needs a clone of the official repository (nothing of it is copied here; benchmarks/official_step.py imports its
modules at run time, and its `Official` runs the statements of one iteration of `train_ss_3d.py` /
`train_ss_2d.py` in their order):

    git clone https://github.com/ycwu1997/SS-Net /tmp/SS-Net && git -C /tmp/SS-Net checkout c0a8bf6
    python -m benchmarks.official_fixture --official /tmp/SS-Net
    python -m pytest -q tests/test_official_fixture.py

What the fixture holds, per dataset (LA: 3-D V-Net, ACDC: 2-D U-Net), in float64, for two consecutive training
iterations of the official step: every loss term and the warm-up weight w(t); per group of parameters (a network
block, a head, a selector) the norm, sum and absolute sum of the gradient, of the weights' change since the start
and of the BatchNorm statistics' change, and the number of BatchNorm updates; the prototype memory itself; one
draw of the generator after the step. Everything needed to start again is defined here, not stored: the batch
(`fixture_batch`, seeded), the initial weights (`initial_state`, a seeded rule on the official parameter names and
shapes, so that it does not depend on the order in which either side builds its modules) and the generator seed
before each iteration. The fixture records digests of both, so that a change of torch's generators is reported as
such.

Small on purpose, so that the default suite runs it in seconds: 16^3 crops for LA (batch 2 + 2), 32^2 for ACDC
(2 + 2), and the official networks at reduced width (V-Net `n_filters=4`; U-Net feature channels 4..64 instead of
16..256, built with the official `Encoder` / `Decoder` classes). Two adaptations of the official code, both
recorded in the fixture:
* the official networks create the projection head's first layer with 16 inputs (the embedding width of the full
  networks, `VNet.py` / `unet.py` `dim_in = 16`); here it is replaced by a Linear with 4 inputs, the reduced
  embedding width;
* run in float64, the official 2-D Dice (`softDiceLoss`, used by VAT2d) would round the clean prediction to float32
  (`target.float()`) and the ACDC LDS term would differ from an exact float64 computation by ~1e-6 relative;
  in the official fp32 training that call does nothing, so here `.float()` of a float64 tensor is made to do
  nothing as well (`--keep_float_cast` keeps the official rounding, to see the difference).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.cli import ScriptParser

OFFICIAL_REPOSITORY = "ycwu1997/SS-Net"
OFFICIAL_COMMIT = "c0a8bf6"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "official_ssnet_step.json"
TERMS = ("dice", "lds", "separation_labeled", "separation_unlabeled", "total")
DIGESTS = ("gradient", "update", "statistics")  # per group: [norm, sum, absolute sum]
RELATIVE_TOLERANCE = 1e-10  # float64 rounding of two orders of the same sums stays below ~1e-13
# an analytically zero quantity (a conv bias before BatchNorm, the memory selectors' gradient) is rounding noise
# on either side: judged against the largest of its kind in the step instead of its own scale
NOISE_FLOOR = 1e-12


@dataclass(frozen=True)
class Case:
    """One dataset's fixture setting: the network, the batch and the iterations."""

    dataset: str
    network: str  # this project's network name; the official class is VNet.py / unet.py
    network_kwargs: dict
    crop: tuple[int, ...]
    labeled: int  # the first `labeled` images of the batch are labeled, as in the official scripts
    unlabeled: int
    first_iteration: int  # 1-based, the trainer's counting
    learning_rate: float  # the official schedule's LR at first_iteration
    data_seed: int = 1
    init_seed: int = 2
    iterations: int = 2

    @property
    def num_classes(self) -> int:
        return self.network_kwargs["num_classes"]

    def generator_seed(self, iteration: int) -> int:
        """The global generator is seeded with this before each iteration, on both sides."""
        return 10_000 + iteration


CASES = {
    # LA counts iterations from 1 when it evaluates w(t): floor(t/150) goes 19 -> 20 between 2999 and 3000;
    # the LR is 1e-3 there (x0.1 after iteration 2500)
    "LA": Case("LA", "vnet", {"in_channels": 1, "num_classes": 2, "base_filters": 4, "dropout": True},
               (16, 16, 16), 2, 2, 2999, 1e-3),
    # ACDC counts from 0: floor((t-1)/150) goes 99 -> 100 between 15000 and 15001; constant LR
    "ACDC": Case("ACDC", "unet", {"in_channels": 1, "num_classes": 4, "channels": [4, 8, 16, 32, 64]},
                 (32, 32), 2, 2, 15000, 1e-2),
}


def fixture_batch(case: Case) -> tuple[Tensor, Tensor]:
    """(images (B, 1, *crop) float64, labels of the labeled part (B_l, *crop) int64).

    Concentric shells of the foreground classes between radii 0.1 and 0.9 of the crop's half-width, of equal area
    (volume), shifted by i voxels along the last axis in image i, plus unit noise. Every image, unlabeled ones too,
    carries its label map, so that the network's predictions of either half follow the labels in part and every
    class gets prototypes."""
    generator = torch.Generator().manual_seed(case.data_seed)
    batch = case.labeled + case.unlabeled
    noise = torch.randn((batch, 1, *case.crop), generator=generator, dtype=torch.float64)
    axes = [torch.linspace(-1, 1, size, dtype=torch.float64) for size in case.crop]
    radius = torch.stack(torch.meshgrid(*axes, indexing="ij")).square().sum(0).sqrt()
    shells = torch.zeros(case.crop, dtype=torch.long)
    dims, inner, outer = len(case.crop), 0.1, 0.9
    edges = torch.linspace(inner**dims, outer**dims, case.num_classes, dtype=torch.float64) ** (1 / dims)
    for c in range(1, case.num_classes):
        shells[(radius >= edges[c - 1]) & (radius < edges[c])] = c
    labels = torch.stack([shells.roll(shifts=i, dims=-1) for i in range(batch)])
    images = noise + labels.unsqueeze(1).to(torch.float64)
    return images, labels[: case.labeled].clone()


def initial_state(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], seed: int) -> dict[str, Tensor]:
    """The start of both sides: one generator draws every tensor in the order of the sorted names.

    Weights (2-D and more) uniform in +-1/sqrt(fan-in) (fan-in = numel / first dim); BatchNorm scales
    1 +- 0.25, biases +-0.1, running means +-0.1, running variances 1 +- 0.25 (not the constructors' 1 / 0:
    the memory projects its candidates with eval-mode statistics, which should not be the identity); counters 0."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape, dtype = shapes[name]
        if not dtype.is_floating_point:
            state[name] = torch.zeros(shape, dtype=dtype)
            continue
        u = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5  # in [-0.5, 0.5)
        if len(shape) >= 2:
            value = 2 * u / math.sqrt(math.prod(shape) / shape[0])
        elif name.endswith(("running_var", ".weight")):  # 1-D weights are BatchNorm scales
            value = 1 + 0.5 * u
        else:
            value = 0.2 * u
        state[name] = value
    return state


def group_of(name: str) -> str:
    """encoder.block_one.conv.0.weight -> encoder.block_one; projection_head.0.weight -> projection_head."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("encoder", "decoder") else parts[0]


def _digest(tensors: Mapping[str, Tensor | None]) -> dict[str, list[float]]:
    """Per group [norm, sum, absolute sum] of float64 tensors (None counts as zeros)."""
    parts: dict[str, list[Tensor]] = {}
    for name, value in tensors.items():
        if value is not None:
            parts.setdefault(group_of(name), []).append(value.detach().double().reshape(-1))
        else:
            parts.setdefault(group_of(name), [])
    out = {}
    for group, values in sorted(parts.items()):
        flat = torch.cat(values) if values else torch.zeros(1, dtype=torch.float64)
        out[group] = [float(flat.norm()), float(flat.sum()), float(flat.abs().sum())]
    return out


def tensor_digest(tensor: Tensor) -> list[float]:
    flat = tensor.detach().double().reshape(-1)
    return [float(flat.sum()), float(flat.abs().sum()), float(flat.norm())]


def step_record(*, iteration: int, weight: float, terms: Mapping[str, float], gradients: Mapping[str, Tensor | None],
                parameters: Mapping[str, Tensor], buffers: Mapping[str, Tensor], start: Mapping[str, Tensor],
                memory: list[Tensor | None], random_after_step: float) -> dict:
    """What the fixture keeps of one iteration (names: the official state-dict names)."""
    floating = {n: b for n, b in buffers.items() if b.dtype.is_floating_point}
    counters: dict[str, int] = {}
    for name, value in buffers.items():
        if name.endswith("num_batches_tracked"):
            counters[group_of(name)] = counters.get(group_of(name), 0) + int(value)
    return {
        "iteration": iteration,
        "weight": weight,
        "terms": {k: float(terms[k]) for k in TERMS},
        "gradient": _digest(gradients),
        "update": _digest({n: p.detach() - start[n] for n, p in parameters.items()}),
        "statistics": _digest({n: b - start[n] for n, b in floating.items()}),
        "batchnorm_updates": dict(sorted(counters.items())),
        "memory": [None if m is None else torch.as_tensor(m).double().tolist() for m in memory],
        "random_after_step": random_after_step,
    }


def differences(expected: dict, actual: dict) -> dict[str, tuple[float, float]]:
    """{quantity: (difference, allowed)} of one iteration's records; a quantity fits when difference <= allowed.

    Terms and w(t): relative to their value. Digests: the norm relative to the norm, a sum relative to the
    absolute sum, plus NOISE_FLOOR of the kind's largest norm in the step. Memory: per class, the largest element
    difference relative to the class's largest element. Counters, memory shapes and the generator: exact."""
    out: dict[str, tuple[float, float]] = {}
    for key in ("weight", *(f"terms.{t}" for t in TERMS)):
        a, b = _lookup(expected, key), _lookup(actual, key)
        out[key] = (abs(b - a), RELATIVE_TOLERANCE * abs(a))
    for kind in DIGESTS:
        floor = NOISE_FLOOR * max((v[0] for v in expected[kind].values()), default=0.0)
        if set(expected[kind]) != set(actual[kind]):
            out[f"{kind} groups"] = (math.inf, 0.0)
            continue
        for group, (norm, total, absolute) in expected[kind].items():
            a_norm, a_total, _ = actual[kind][group]
            out[f"{kind}.{group}.norm"] = (abs(a_norm - norm), RELATIVE_TOLERANCE * norm + floor)
            out[f"{kind}.{group}.sum"] = (abs(a_total - total), RELATIVE_TOLERANCE * absolute + floor)
    exact = expected["batchnorm_updates"] == actual["batchnorm_updates"]
    out["batchnorm_updates"] = (0.0 if exact else math.inf, 0.0)
    for c, (a, b) in enumerate(zip(expected["memory"], actual["memory"], strict=True)):
        if a is None or b is None:
            out[f"memory.class{c}"] = (0.0 if a is None and b is None else math.inf, 0.0)
            continue
        a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        if a.shape != b.shape:
            out[f"memory.class{c}"] = (math.inf, 0.0)
            continue
        out[f"memory.class{c}"] = (float((a - b).abs().max()), RELATIVE_TOLERANCE * float(a.abs().max()))
    same_draw = expected["random_after_step"] == actual["random_after_step"]
    out["random_after_step"] = (0.0 if same_draw else math.inf, 0.0)
    return out


def _lookup(record: dict, dotted: str) -> float:
    value = record
    for part in dotted.split("."):
        value = value[part]
    return float(value)


def scaled_difference(difference: float, allowed: float) -> float:
    """A difference over its quantity's scale (allowed / RELATIVE_TOLERANCE), for printing: 1e-10 = the limit."""
    if allowed == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference * RELATIVE_TOLERANCE / allowed


def state_digest(state: Mapping[str, Tensor]) -> str:
    """A hash of the start: exact, since the start is drawn and scaled element by element (no sums)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The official side (needs the clone)


@contextmanager
def float64_kept(enabled: bool = True) -> Iterator[None]:
    """`.float()` of a float64 tensor returns it unchanged (what the call does to the official fp32 tensors)."""
    original = torch.Tensor.float
    if enabled:
        def keep(self, *args, **kwargs):
            return self if self.dtype == torch.float64 else original(self, *args, **kwargs)
        torch.Tensor.float = keep
    try:
        yield
    finally:
        torch.Tensor.float = original


def official_network(code: Path, case: Case) -> nn.Module:
    """The official network class at the case's reduced width (module docstring), float64."""
    from benchmarks.official_step import load_module

    width = case.network_kwargs.get("base_filters") or case.network_kwargs["channels"][0]
    if case.dataset == "LA":
        vnet = load_module(code / "networks" / "VNet.py", "official_vnet")
        model = vnet.VNet(n_channels=1, n_classes=case.num_classes, n_filters=width, normalization="batchnorm",
                          has_dropout=True)
    else:
        unet = load_module(code / "networks" / "unet.py", "official_unet")
        model = unet.UNet(in_chns=1, class_num=case.num_classes)
        params = {**model.encoder.params, "feature_chns": list(case.network_kwargs["channels"])}
        model.encoder, model.decoder = unet.Encoder(params), unet.Decoder(params)
    model.projection_head[0] = nn.Linear(width, model.projection_head[0].out_features)
    return model.double()


def make_case(root: Path, case: Case, keep_float_cast: bool) -> dict:
    """Run the official step for `case.iterations` iterations and return the fixture's entry."""
    from benchmarks.official_step import Official, cuda_calls_stay_on_cpu
    from training.optim import build_sgd

    images, labels = fixture_batch(case)
    official = Official(root, case.dataset, case.labeled)
    official.model = official_network(root / "code", case)
    shapes = {n: (tuple(t.shape), t.dtype) for n, t in official.model.state_dict().items()}
    start = initial_state(shapes, case.init_seed)
    official.model.load_state_dict(start, strict=True)
    candidates = _count_candidates(official)
    optimizer = build_sgd(official.model.parameters(), lr=case.learning_rate)  # SGD 0.9, 1e-4: the scripts'
    records = []
    for iteration in range(case.first_iteration, case.first_iteration + case.iterations):
        torch.manual_seed(case.generator_seed(iteration))
        with cuda_calls_stay_on_cpu(), float64_kept(not keep_float_cast):
            result = official.step(images, labels, optimizer, iteration)
        random_after_step = float(torch.rand(()))
        records.append(step_record(
            iteration=iteration, weight=result["weight"], terms=result["terms"], gradients=result["grads"],
            parameters=dict(official.model.named_parameters()), buffers=dict(official.model.named_buffers()),
            start=start, memory=list(official.memory.memory), random_after_step=random_after_step))
        records[-1]["memory_candidates"] = candidates.pop(0)
    return {
        "case": asdict(case),
        "batch_digest": {"images": tensor_digest(images), "labels": tensor_digest(labels)},
        "initial_state_sha256": state_digest(start),
        "iterations": records,
    }


def _count_candidates(official) -> list[dict[str, int]]:
    """Record, per iteration, how many candidates of each class reached the memory (> 32: ranked, lowest kept)."""
    seen: list[dict[str, int]] = []
    add = official.memory.add_features_from_sample_learned

    def counting(model, features, class_labels):
        seen.append({str(c): int((class_labels == c).sum()) for c in range(official.num_classes)})
        return add(model, features, class_labels)

    official.memory.add_features_from_sample_learned = counting
    return seen


def check_exercised(entry: dict) -> list[str]:
    """What the fixture fails to exercise: a zero term, an empty or un-ranked memory class, a constant w(t)."""
    problems = []
    records, classes = entry["iterations"], entry["case"]["network_kwargs"]["num_classes"]
    for record in records:
        it = record["iteration"]
        problems += [f"iteration {it}: {t} is 0" for t, v in record["terms"].items() if v == 0.0]
        for c in range(1, classes):
            if record["memory"][c] is None:
                problems.append(f"iteration {it}: class {c} has no prototypes")
            if record["memory_candidates"][str(c)] <= 32:
                problems.append(f"iteration {it}: class {c} has <= 32 candidates (the ranking does not run)")
    if len({r["weight"] for r in records}) < 2:
        problems.append("w(t) is the same in both iterations (the ramp's step is not exercised)")
    return problems


def to_json(value) -> str:
    """Indented JSON with every innermost list (a digest, a prototype) on one line."""
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  json.dumps(value, indent=1)) + "\n"
    if json.loads(text) != json.loads(json.dumps(value)):
        raise AssertionError("to_json changed the value")
    return text


OFFICIAL_FILES = ("code/train_ss_3d.py", "code/train_ss_2d.py", "code/networks/VNet.py", "code/networks/unet.py",
                  "code/utils/losses.py", "code/utils/contrastive_losses.py", "code/utils/feature_memory.py",
                  "code/utils/ramps.py")


def official_provenance(root: Path) -> dict:
    """The commit the fixture comes from, and the sha256 of every official file it used (or whose order
    benchmarks.official_step.Official follows), so that a clone at another commit shows in the fixture's diff."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None
    if commit is not None and not commit.startswith(OFFICIAL_COMMIT):
        print(f"warning: {root} is at {commit[:7]}, not {OFFICIAL_COMMIT}; the fixture records the files' hashes")
    return {"repository": OFFICIAL_REPOSITORY, "commit": OFFICIAL_COMMIT, "clone_head": commit,
            "order": {"LA": "code/train_ss_3d.py", "ACDC": "code/train_ss_2d.py"},
            "files_sha256": {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in OFFICIAL_FILES}}


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, type=Path, help="clone of github.com/ycwu1997/SS-Net @ c0a8bf6")
    p.add_argument("--output", type=Path, default=FIXTURE, help="fixture file to write (default: %(default)s)")
    p.add_argument("--keep_float_cast", action="store_true",
                   help="keep the official 2-D Dice's float32 cast of VAT's target (moves ACDC's LDS by ~1e-7 "
                        "relative, so the test fails on such a fixture; for comparison only)")
    args = p.parse_args(argv)
    if not (args.official / "code" / "utils" / "losses.py").is_file():
        p.error(f"--official {args.official}: not a clone of github.com/ycwu1997/SS-Net (no code/utils/losses.py); "
                "git clone https://github.com/ycwu1997/SS-Net PATH")
    torch.set_default_dtype(torch.float64)  # the VAT random start is drawn in the default dtype, on both sides
    entries, problems = {}, []
    for name, case in CASES.items():
        entries[name] = make_case(args.official, case, args.keep_float_cast)
        problems += [f"{name}: {p}" for p in check_exercised(entries[name])]
        for record in entries[name]["iterations"]:
            terms = "  ".join(f"{k} {v:.12g}" for k, v in record["terms"].items())
            print(f"{name} iteration {record['iteration']}: w {record['weight']:.6g}  {terms}  "
                  f"memory candidates {record['memory_candidates']}")
    if problems:
        raise SystemExit("error: the fixture would not exercise every part of the step: " + "; ".join(problems))
    fixture = {
        "about": "SS-Net training steps of the official code in float64; made by benchmarks/official_fixture.py, "
                 "checked by tests/test_official_fixture.py (docs/testing.md)",
        "official": official_provenance(args.official),
        "adaptations": [
            "networks at reduced width (V-Net n_filters=4; U-Net feature channels [4, 8, 16, 32, 64] through the "
            "official Encoder/Decoder); the projection head's first Linear takes the reduced embedding width",
            "float64 throughout (default dtype float64: the VAT random start is drawn in it)",
            "`.cuda()` returns the CPU tensor",
            ("the 2-D Dice's float32 cast of its target is KEPT (ACDC LDS rounded)" if args.keep_float_cast else
             "`.float()` of a float64 tensor returns it unchanged (a no-op, as on the official fp32 tensors)"),
        ],
        "made_with": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "tolerance": {"relative": RELATIVE_TOLERANCE, "noise_floor": NOISE_FLOOR},
        "cases": entries,
    }
    write_atomically(args.output, to_json(fixture))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
