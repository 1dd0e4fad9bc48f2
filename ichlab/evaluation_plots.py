"""Figures and a widget for evaluating prediction tables.

Precision-recall curves per class and model, counts of true and false positives and
negatives per class, and a threshold explorer (ipywidgets) that shows how precision,
recall and F1 move with a class's threshold. The numbers come from ``ichlab.metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from ichlab import SUBTYPES
from ichlab.metrics import classification_metrics, confusion_counts
from ichlab.prediction_tables import check_prediction_table, table_arrays

COUNT_NAMES = {"tp": "true positives", "fp": "false positives", "fn": "false negatives", "tn": "true negatives"}


def threshold_summary(table: pd.DataFrame, subtype: str, threshold: float) -> dict[str, float]:
    """Return precision, recall, F1 and the four counts of one class at ``threshold``.

    Keys: ``threshold``, ``precision``, ``recall``, ``f1`` (NaN when undefined, as in
    :func:`ichlab.metrics.classification_metrics`), ``tp``, ``fp``, ``fn``, ``tn``.
    """
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype {subtype!r} is not one of {', '.join(SUBTYPES)}")
    check_prediction_table(table)
    column = SUBTYPES.index(subtype)
    labels, probabilities = table_arrays(table)
    scores = classification_metrics(labels[:, column], probabilities[:, column], threshold)
    counts = confusion_counts(table, dict.fromkeys(SUBTYPES, threshold)).loc[subtype]
    summary = {"threshold": float(threshold)}
    summary.update({name: scores[name] for name in ("precision", "recall", "f1")})
    summary.update({name: int(counts[name]) for name in COUNT_NAMES})
    return summary


def plot_precision_recall(
    tables: Mapping[str, pd.DataFrame],
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    *,
    title: str = "Precision-recall curves on the test split",
) -> Figure:
    """Draw one precision-recall panel per class with one curve per model.

    Parameters
    ----------
    tables
        Model name to its prediction table (usually the test split).
    thresholds
        Model name to its per-class thresholds; each model's operating point is marked.

    Returns
    -------
    matplotlib.figure.Figure
        Five panels; the dashed line is the positive fraction (the precision of guessing).
    """
    figure, axes = plt.subplots(1, len(SUBTYPES), figsize=(3.2 * len(SUBTYPES), 3.4), sharey=True)
    for model, table in tables.items():
        check_prediction_table(table, f"prediction table of {model}")
    for column, (ax, subtype) in enumerate(zip(axes, SUBTYPES)):
        for model, table in tables.items():
            labels, probabilities = table_arrays(table)
            if labels[:, column].sum() == 0:
                continue
            precision, recall, _ = precision_recall_curve(labels[:, column], probabilities[:, column])
            lines = ax.plot(recall, precision, label=model, linewidth=1.2, drawstyle="steps-post")
            if thresholds is not None and model in thresholds:
                point = threshold_summary(table, subtype, thresholds[model][subtype])
                ax.plot(point["recall"], point["precision"], "o", color=lines[0].get_color(), markersize=5)
        split_labels = next(iter(tables.values()))[subtype].to_numpy() if tables else np.zeros(0)
        if split_labels.sum() == 0:
            ax.text(0.5, 0.5, "no positive slice:\nundefined", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.axhline(split_labels.mean(), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{subtype} ({int(split_labels.sum())} positive)", fontsize=9)
        ax.set_xlabel("recall (fraction)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("precision (fraction)")
    with_curves = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if with_curves:
        with_curves[0].legend(fontsize=8, loc="lower left")
    figure.suptitle(title + ("; dots: thresholds chosen on validation" if thresholds else ""), fontsize=10)
    figure.tight_layout()
    return figure


def plot_confusion_counts(
    tables: Mapping[str, pd.DataFrame],
    thresholds: Mapping[str, Mapping[str, float]],
    *,
    title: str = "Slice counts at the thresholds chosen on validation",
) -> Figure:
    """Draw true and false positives and negatives per class as grouped bars, one panel per count.

    Each panel has its own y scale, because true negatives outnumber the rest by orders
    of magnitude.
    """
    counts = {model: confusion_counts(table, thresholds[model]) for model, table in tables.items()}
    figure, axes = plt.subplots(1, len(COUNT_NAMES), figsize=(3.6 * len(COUNT_NAMES), 3.6))
    positions = np.arange(len(SUBTYPES))
    width = 0.8 / max(len(counts), 1)
    for ax, (name, description) in zip(axes, COUNT_NAMES.items()):
        for offset, (model, table) in enumerate(counts.items()):
            bars = ax.bar(positions + offset * width, table[name].to_numpy(), width, label=model)
            ax.bar_label(bars, fontsize=6)
        ax.set_xticks(positions + width * (len(counts) - 1) / 2, [subtype[:5] for subtype in SUBTYPES], fontsize=8)
        ax.set_title(description, fontsize=9)
        ax.set_xlabel("subtype")
        ax.set_ylabel("slices")
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_threshold_curves(table: pd.DataFrame, subtype: str, threshold: float | None = None, *, ax=None) -> Figure:
    """Draw precision, recall and F1 of one class against the threshold, with ``threshold`` marked."""
    check_prediction_table(table)
    column = SUBTYPES.index(subtype)
    labels, probabilities = table_arrays(table)
    if ax is None:
        figure, ax = plt.subplots(figsize=(6, 3.4))
    else:
        figure = ax.figure
    if labels[:, column].sum() == 0:
        ax.text(0.5, 0.5, f"no positive {subtype} slice: undefined", ha="center", va="center", transform=ax.transAxes)
    else:
        precision, recall, candidates = precision_recall_curve(labels[:, column], probabilities[:, column])
        precision, recall = precision[:-1], recall[:-1]  # the last pair has no threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        ax.plot(candidates, precision, label="precision", drawstyle="steps-post")
        ax.plot(candidates, recall, label="recall", drawstyle="steps-post")
        ax.plot(candidates, f1, label="F1", drawstyle="steps-post", linewidth=2)
        ax.legend(fontsize=8, loc="lower left")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold (probability)")
    ax.set_ylabel("value (fraction)")
    ax.set_title(f"{subtype}: precision, recall and F1 by threshold", fontsize=10)
    figure.tight_layout()
    return figure


def _readout(summary: dict[str, float]) -> str:
    def number(value: float) -> str:
        return "undefined" if np.isnan(value) else f"{value:.3f}"

    return (
        f"<b>threshold {summary['threshold']:.3f}</b>: precision {number(summary['precision'])}, "
        f"recall {number(summary['recall'])}, F1 {number(summary['f1'])}; "
        f"TP {summary['tp']}, FP {summary['fp']}, FN {summary['fn']}, TN {summary['tn']}"
    )


def threshold_explorer(table: pd.DataFrame, thresholds: Mapping[str, float] | None = None, *, subtype: str = SUBTYPES[0]):
    """Build an ipywidgets explorer: pick a class and move its threshold; see precision, recall and F1.

    Parameters
    ----------
    table
        A prediction table, usually the validation split of one model.
    thresholds
        Starting threshold per class (for example from ``choose_thresholds``); 0.5 otherwise.

    Returns
    -------
    ipywidgets.VBox
        A class dropdown and a threshold slider, a text line with the values and counts, and
        an output area that redraws :func:`plot_threshold_curves` on every change.
    """
    import ipywidgets as widgets
    from IPython.display import display

    check_prediction_table(table)
    starting = dict(thresholds) if thresholds is not None else dict.fromkeys(SUBTYPES, 0.5)
    subtype_picker = widgets.Dropdown(options=list(SUBTYPES), value=subtype, description="subtype")
    slider = widgets.FloatSlider(
        value=starting[subtype], min=0.0, max=1.0, step=0.005, readout_format=".3f", description="threshold"
    )
    readout = widgets.HTML()
    output = widgets.Output()

    def redraw(_change=None) -> None:
        summary = threshold_summary(table, subtype_picker.value, slider.value)
        readout.value = _readout(summary)
        with output:
            output.clear_output(wait=True)
            figure = plot_threshold_curves(table, subtype_picker.value, slider.value)
            display(figure)
            plt.close(figure)

    def on_subtype(change) -> None:
        # Moving the slider redraws; a class whose start equals the current value redraws here.
        new_value = starting[change["new"]]
        if slider.value == new_value:
            redraw()
        slider.value = new_value

    subtype_picker.observe(on_subtype, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([subtype_picker, slider]), readout, output])
