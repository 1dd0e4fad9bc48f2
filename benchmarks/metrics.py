"""Time the patient bootstrap of ``ichlab.metrics.evaluate`` and ``paired_difference``.

Run: ``.venv/bin/python benchmarks/metrics.py``. The input is a simulated test split of
about the RSNA subset's test size: 200 patients of 50 slices (10,000 slices), 5 classes,
evaluated with 1000 replicates. Prints seconds per call and the ratios between them.
"""

from __future__ import annotations

import time

from ichlab import metrics
from ichlab.bootstrap import INTERVAL_METRICS
from ichlab.reference import simulate_predictions

N_PATIENTS = 200
SLICES_PER_PATIENT = 50
N_BOOTSTRAP = 1000
REPEATS = 3


def best_of(function) -> float:
    """Return the fastest of ``REPEATS`` wall times of ``function()`` in seconds."""
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    val = simulate_predictions(N_PATIENTS, slices_per_patient=SLICES_PER_PATIENT, seed=1)
    test = simulate_predictions(N_PATIENTS, slices_per_patient=SLICES_PER_PATIENT, seed=2)
    other_model = simulate_predictions(N_PATIENTS, slices_per_patient=SLICES_PER_PATIENT, seed=2, model_seed=1)
    thresholds = metrics.choose_thresholds(val)
    count_metrics = ("f1", "f1_at_0.5", "precision", "recall")

    timings = {
        "evaluate, F1/precision/recall intervals": best_of(
            lambda: metrics.evaluate(val, test, n_bootstrap=N_BOOTSTRAP, interval_metrics=count_metrics, progress=False)
        ),
        "evaluate, all intervals (adds ROC AUC, AP)": best_of(
            lambda: metrics.evaluate(val, test, n_bootstrap=N_BOOTSTRAP, interval_metrics=INTERVAL_METRICS, progress=False)
        ),
        "paired_difference, F1": best_of(
            lambda: metrics.paired_difference(
                test, other_model, thresholds, thresholds, n_bootstrap=N_BOOTSTRAP, seed=0, progress=False
            )
        ),
        "evaluate, no bootstrap": best_of(lambda: metrics.evaluate(val, test, n_bootstrap=0, progress=False)),
    }
    print(f"{len(test)} slices, {N_PATIENTS} patients, 5 classes, {N_BOOTSTRAP} replicates; best of {REPEATS}")
    baseline = timings["evaluate, no bootstrap"]
    for name, seconds in timings.items():
        print(f"{name:45s} {seconds:7.2f} s  {seconds / baseline:6.1f}x the evaluation without bootstrap")


if __name__ == "__main__":
    main()
