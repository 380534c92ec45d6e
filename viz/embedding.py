"""t-SNE of feature vectors (scikit-learn) and class-coloured scatter plots of the result."""
from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes

# background grey, then the classes in the colours used by every overlay of this package
CLASS_COLORS = ("#9e9e9e", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def class_color(c: int) -> str:
    return CLASS_COLORS[c % len(CLASS_COLORS)]


def tsne_embedding(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, d) features -> (N, 2) t-SNE coordinates (PCA initialisation, seeded).

    The perplexity is capped below N, which sklearn requires, so tiny inputs still work.
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] < 3:
        raise ValueError(f"t-SNE needs an (N >= 3, d) feature array, got shape {features.shape}")
    perplexity = min(perplexity, (features.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features)


def scatter_by_class(ax: Axes, points: np.ndarray, labels: np.ndarray, class_names: dict[int, str] | None = None,
                     *, size: float = 4.0, legend: bool = True, colors: dict[int, str] | None = None) -> None:
    """Scatter (N, 2) points coloured by integer class; axes ticks off (t-SNE coordinates carry no units)."""
    for c in np.unique(labels):
        chosen = labels == c
        name = (class_names or {}).get(int(c), f"class {int(c)}")
        color = (colors or {}).get(int(c), class_color(int(c)))
        ax.scatter(points[chosen, 0], points[chosen, 1], s=size, c=color, label=name, linewidths=0, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        ax.legend(loc="best", fontsize=7, markerscale=2, frameon=False)


def silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score with cosine distance in the original feature space (1: separated, 0: mixed)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(features, labels, metric="cosine"))
