"""Training plots logged to MLflow as images: loss and validation curves, ROC, precision-recall, calibration."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def learning_curves(train_loss: list[tuple[int, float]], valid_auc: list[tuple[int, float]]) -> Figure:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if train_loss:
        ax[0].plot(*zip(*train_loss, strict=True), marker=".")
    ax[0].set(title="training loss", xlabel="step", ylabel="loss")
    if valid_auc:
        ax[1].plot(*zip(*valid_auc, strict=True), marker="o", color="tab:green")
    ax[1].set(title="validation AUC", xlabel="step", ylabel="AUC")
    fig.tight_layout()
    return fig


def roc_pr_calibration(labels: np.ndarray, scores: dict[str, np.ndarray], bins: int = 10) -> Figure:
    """ROC, precision-recall and reliability curves of several scorers on the same labels."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        ax[0].plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(labels, s)
        ax[1].plot(rec, prec, label=name)
        if np.all((s >= 0) & (s <= 1)):
            frac, mean = calibration_curve(labels, s, n_bins=bins, strategy="uniform")
            ax[2].plot(mean, frac, marker="o", label=name)
    ax[0].plot([0, 1], [0, 1], "k:", lw=1)
    ax[2].plot([0, 1], [0, 1], "k:", lw=1)
    ax[0].set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    ax[1].set(title="precision-recall", xlabel="recall", ylabel="precision")
    ax[2].set(title="calibration", xlabel="mean predicted probability", ylabel="fraction of clicks")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig
