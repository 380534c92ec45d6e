"""Figure and utility scripts, run as modules from the repository root: `python -m tools.<name> -h`.

compare_runs (several runs' predictions side by side), plot_runs (training curves), feature_tsne (decoder
features per class), toy_two_moons (the paper's Fig. 1 study), score (score any tool's label maps).
"""
