"""Charts for asset metadata: Dagster has no plot type, so PNGs are embedded in markdown."""

import base64
import io

import matplotlib
from matplotlib.figure import Figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..modeling.evaluation import Evaluation  # noqa: E402


def png_markdown(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def methods_chart(evaluation: Evaluation, metric: str = "ndcg@10") -> str:
    """Bar chart of one metric per method with its 95% bootstrap interval."""
    names = [r.method for r in evaluation.results]
    values = [r.metrics[metric] for r in evaluation.results]
    errors = [
        [v - r.intervals.get(metric, (v, v))[0] for v, r in zip(values, evaluation.results, strict=True)],
        [r.intervals.get(metric, (v, v))[1] - v for v, r in zip(values, evaluation.results, strict=True)],
    ]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(names, values, yerr=errors, capsize=4, color="#4c72b0")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} on test, 95% bootstrap CI")
    return png_markdown(figure, f"{metric} by method")


def interval_chart(
    labels: list[str], values: list[float], lows: list[float], highs: list[float], metric: str, title: str
) -> str:
    """Bar chart of one value per label with its interval (NaN intervals drawn without bars)."""
    errors = [
        [max(v - lo, 0.0) if lo == lo else 0.0 for v, lo in zip(values, lows, strict=True)],
        [max(hi - v, 0.0) if hi == hi else 0.0 for v, hi in zip(values, highs, strict=True)],
    ]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(labels, values, yerr=errors, capsize=4, color="#55a868")
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.tick_params(axis="x", labelrotation=20)
    return png_markdown(figure, title)
