"""Tests of the evaluation figures and the threshold explorer in ichlab.evaluation_plots."""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from ichlab import SUBTYPES, evaluation_plots, metrics

from test_metrics import make_table, random_table


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def hand_table():
    """Epidural: labels 0 1 0 1 with probabilities 0.2 0.5 0.5 0.8; the other classes are random."""
    rng = np.random.default_rng(40)
    labels = rng.integers(0, 2, size=(4, 5))
    probabilities = rng.random((4, 5))
    labels[:, 0] = [0, 1, 0, 1]
    probabilities[:, 0] = [0.2, 0.5, 0.5, 0.8]
    labels[:2, 1:] = [1, 1, 1, 1]  # every class has a positive
    return make_table(labels, probabilities)


def test_threshold_summary_values():
    summary = evaluation_plots.threshold_summary(hand_table(), "epidural", 0.5)
    assert summary["f1"] == pytest.approx(0.8)
    assert summary["precision"] == pytest.approx(2 / 3)
    assert summary["recall"] == 1.0
    assert (summary["tp"], summary["fp"], summary["fn"], summary["tn"]) == (2, 1, 0, 1)
    above_all = evaluation_plots.threshold_summary(hand_table(), "epidural", 0.9)
    assert math.isnan(above_all["precision"])  # nothing predicted positive
    assert above_all["f1"] == 0.0
    with pytest.raises(ValueError, match="hemorrhage"):
        evaluation_plots.threshold_summary(hand_table(), "hemorrhage", 0.5)


def test_precision_recall_figure_draws_each_model():
    tables = {"2D": random_table(seed=41), "LSTM": random_table(seed=42)}
    tables["LSTM"]["subdural"] = 0
    thresholds = {name: metrics.choose_thresholds(random_table(seed=43)) for name in tables}
    figure = evaluation_plots.plot_precision_recall(tables, thresholds)
    axes = figure.axes
    assert len(axes) == len(SUBTYPES)
    epidural = axes[0]
    assert epidural.get_title().startswith("epidural (")
    assert epidural.get_xlabel() == "recall (fraction)"
    curves = [line for line in epidural.get_lines() if line.get_label() in tables]
    assert [line.get_label() for line in curves] == ["2D", "LSTM"]
    precision, recall, _ = precision_recall_curve(tables["2D"]["epidural"], tables["2D"]["prob_epidural"])
    np.testing.assert_allclose(curves[0].get_xdata(), recall)
    np.testing.assert_allclose(curves[0].get_ydata(), precision)
    subdural_curves = [line.get_label() for line in axes[-1].get_lines() if line.get_label() in tables]
    assert subdural_curves == ["2D"]  # the LSTM table has no positive subdural slice


def test_precision_recall_figure_marks_undefined_class():
    table = random_table(seed=44)
    table["epidural"] = 0
    figure = evaluation_plots.plot_precision_recall({"2D": table})
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["no positive slice:\nundefined"]


def test_confusion_count_bars_equal_counts():
    tables = {"2D": random_table(seed=45), "2.5D": random_table(seed=46)}
    thresholds = {"2D": dict.fromkeys(SUBTYPES, 0.5), "2.5D": dict.fromkeys(SUBTYPES, 0.6)}
    figure = evaluation_plots.plot_confusion_counts(tables, thresholds)
    assert [ax.get_title() for ax in figure.axes] == list(evaluation_plots.COUNT_NAMES.values())
    for ax, name in zip(figure.axes, evaluation_plots.COUNT_NAMES):
        containers = ax.containers
        assert len(containers) == 2
        for container, model in zip(containers, tables):
            heights = [bar.get_height() for bar in container]
            expected = metrics.confusion_counts(tables[model], thresholds[model])[name].tolist()
            assert heights == expected
    counts = metrics.confusion_counts(tables["2D"], thresholds["2D"])
    assert (counts.sum(axis=1) == len(tables["2D"])).all()


def test_threshold_curves_peak_at_best_f1():
    table = random_table(seed=47)
    figure = evaluation_plots.plot_threshold_curves(table, "subarachnoid", 0.5)
    ax = figure.axes[0]
    f1_line = next(line for line in ax.get_lines() if line.get_label() == "F1")
    best = metrics.choose_thresholds(table)["subarachnoid"]
    labels, probabilities = table["subarachnoid"], table["prob_subarachnoid"]
    assert max(f1_line.get_ydata()) == pytest.approx(f1_score(labels, probabilities >= best))
    assert ax.get_xlabel() == "threshold (probability)"


def test_threshold_explorer_updates_readout():
    table = hand_table()
    thresholds = dict.fromkeys(SUBTYPES, 0.5)
    thresholds["intraparenchymal"] = 0.25
    explorer = evaluation_plots.threshold_explorer(table, thresholds)
    assert isinstance(explorer, widgets.VBox)
    controls, readout, output = explorer.children
    subtype_picker, slider = controls.children
    assert isinstance(output, widgets.Output)
    assert "F1 0.800" in readout.value
    assert "TP 2, FP 1, FN 0, TN 1" in readout.value

    slider.value = 0.9
    assert "precision undefined" in readout.value
    assert "F1 0.000" in readout.value

    subtype_picker.value = "intraparenchymal"
    assert slider.value == 0.25
    expected = evaluation_plots.threshold_summary(table, "intraparenchymal", 0.25)
    assert f"TP {expected['tp']}, FP {expected['fp']}" in readout.value
