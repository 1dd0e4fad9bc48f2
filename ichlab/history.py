"""The per-epoch record of a training run: a table of losses and validation scores, and its plot."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class History:
    """Per-epoch results of a run, and which epoch was best.

    Each row contains ``epoch``, ``train_loss``, ``val_loss``, ``learning_rate`` (at the end
    of the epoch), ``seconds``, ``auc_<subtype>`` and ``f1_<subtype>`` on validation (F1 at
    threshold 0.5) for each subtype, ``mean_auc`` and ``mean_f1``.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def table(self) -> pd.DataFrame:
        """The rows as a table indexed by epoch."""
        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def plot(self, title: str = "learning curves"):
        """Plot the losses and the mean validation AUC and F1 by epoch, and return the figure."""
        import matplotlib.pyplot as plt

        table = self.table
        figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
        loss_axis.plot(table.index, table["train_loss"], marker="o", label="training")
        loss_axis.plot(table.index, table["val_loss"], marker="o", label="validation")
        if self.best_epoch:
            loss_axis.axvline(self.best_epoch, color="grey", linestyle=":", label="best epoch")
        loss_axis.set(xlabel="epoch", ylabel="weighted BCE loss", title=f"{title}: loss")
        loss_axis.legend()

        score_axis.plot(table.index, table["mean_auc"], marker="o", label="mean AUC")
        score_axis.plot(table.index, table["mean_f1"], marker="o", label="mean F1 at 0.5")
        score_axis.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1.05), title=f"{title}: validation")
        score_axis.legend()
        figure.tight_layout()
        return figure
