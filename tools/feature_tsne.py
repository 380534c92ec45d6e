"""Feature-space view of trained segmentation models: t-SNE of sampled decoder features per class on one case.

    python -m tools.feature_tsne --checkpoint model/LA_8/supervised_seed1337/best_model.pth \\
        model/LA_8/ss_net_seed1337/best_model.pth --names "labeled only",SS-Net --root_path ./data/LA

Features are NetworkOutput.features (the decoder embedding SS-Net's separation loss shapes); the same
ground-truth-balanced voxels (--samples_per_class per class) are probed in every model. Separated class
clusters and a higher silhouette (cosine, in feature space) mean better class separation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints (or run folders)")
    p.add_argument("--names", default="", help="comma-separated panel titles (default: the run folder names)")
    p.add_argument("--root_path", required=True, help="dataset root")
    p.add_argument("--dataset", default="", choices=("", "LA", "ACDC"), help="default: from the checkpoint")
    p.add_argument("--case", default="", help="case id (default: the first of the dataset's test list)")
    p.add_argument("--samples_per_class", type=int, default=300)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default="feature_tsne.png")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def run(args: argparse.Namespace) -> Path:
    from dataloaders import get_dataset, read_list
    from inference import Predictor
    from viz.features import feature_tsne_figure, network_input, sample_features, sample_positions
    from viz.io import save_png
    from viz.runs import describe_source, unique_names

    if args.samples_per_class < 2:
        raise UserError("--samples_per_class must be >= 2")
    sources = [describe_source(c) for c in args.checkpoint]
    if any(s.kind != "checkpoint" for s in sources):
        raise UserError("--checkpoint takes checkpoint files or run folders holding best_model.pth")
    datasets = {s.dataset for s in sources if s.dataset} | ({args.dataset} if args.dataset else set())
    if len(datasets) != 1:
        raise UserError(f"the checkpoints are from datasets {sorted(datasets) or 'unknown'}: pass --dataset LA|ACDC")
    dataset = datasets.pop()
    task = get_dataset(dataset)
    names = [n.strip() for n in args.names.split(",")] if args.names else unique_names([s.name for s in sources])
    if len(names) != len(sources):
        raise UserError(f"--names gives {len(names)} names for {len(sources)} checkpoints")
    case = args.case or read_list(task.lists_dir() / "test.list")[0]
    image, label = task.load_case(args.root_path, case)

    samples, region = {}, None
    for name, source in zip(names, sources, strict=True):
        predictor = Predictor.from_checkpoint(source.path, device=args.device, dataset=dataset)
        patch_size = tuple(predictor.settings.patch_size)
        if region is None:  # every model sees the first one's region and voxels
            region = network_input(image, label, patch_size)
            positions = sample_positions(region[1], args.samples_per_class, args.seed)
        elif len(patch_size) != region[0].ndim:
            raise UserError(f"{source.path} is a {len(patch_size)}-D model; the first checkpoint is "
                             f"{region[0].ndim}-D")
        samples[name] = sample_features(predictor.network, region[0], region[1], positions)
    class_names = {0: "background", **{c + 1: n for c, n in enumerate(task.class_names)}}
    figure = feature_tsne_figure(samples, class_names, seed=args.seed, perplexity=args.perplexity,
                                 title=f"{dataset} case {case}: decoder features, t-SNE")
    path = save_png(figure, args.output)
    print(f"t-SNE of {len(positions)} voxels x {len(samples)} model(s): {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
