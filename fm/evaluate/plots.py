"""Matplotlib (Agg) figures: sample scatter plots, flow trajectories, metric against NFE."""
from __future__ import annotations

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

__all__ = ["scatter", "draw_trajectories", "trajectories_figure", "nfe_curves"]


def scatter(path: str, samples: np.ndarray, reference: np.ndarray | None = None, title: str = "") -> None:
  """Scatter of `samples` `[n, 2]` over optional `reference` points, saved to `path`."""
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.7", label="target")
  ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="samples")
  ax.set_title(title, fontsize=9)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=7, markerscale=3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def draw_trajectories(ax, trajectory: np.ndarray, title: str = "",
                      reference: np.ndarray | None = None) -> None:
  """Draws `[T, n, 2]` trajectories: paths in olive, start black, end blue, target `[m, 2]` grey."""
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", zorder=0)
  ax.plot(trajectory[:, :, 0], trajectory[:, :, 1], c="olive", alpha=0.25, lw=0.6)
  ax.scatter(trajectory[0, :, 0], trajectory[0, :, 1], s=3, c="black", zorder=3)
  ax.scatter(trajectory[-1, :, 0], trajectory[-1, :, 1], s=3, c="tab:blue", zorder=3)
  ax.set_title(title, fontsize=9)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def trajectories_figure(path: str, panels: list[tuple[str, np.ndarray]],
                        reference: np.ndarray | None = None) -> None:
  """One row of trajectory panels `(title, [T, n, 2])`, side by side, over optional target points."""
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
  for ax, (title, traj) in zip(axes[0], panels):
    draw_trajectories(ax, traj, title, reference)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def nfe_curves(path: str, panels: list[tuple[str, dict[str, tuple[list, list]]]], title: str = "") -> None:
  """One panel per metric `(ylabel, {series label: (nfe, values)})`: metric against NFE (log x)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (ylabel, series) in zip(axes[0], panels):
    for label, (nfe, values) in series.items():
      ax.plot(nfe, values, marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
