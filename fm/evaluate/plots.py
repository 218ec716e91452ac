"""Matplotlib (Agg) figures: sample scatter plots, flow trajectories, metric against NFE."""
from __future__ import annotations

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from fm.io import files


def save(fig, path: str) -> None:
  """Writes `fig` as a PNG (120 dpi) through `fm.io.files` (atomic, process 0) and closes it."""
  with files.atomic(path) as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)

__all__ = ["save", "scatter", "draw_trajectories", "trajectories_figure", "nfe_curves", "images_figure",
           "against"]


def scatter(path: str, samples: np.ndarray, reference: np.ndarray | None = None, title: str = "",
            labels: np.ndarray | None = None) -> None:
  """Scatter of `samples` `[n, 2]` (end points, t = 1) over optional `reference` points, saved to `path`.

  With class `labels` `[n]` (a conditional run) the samples are coloured by class.
  """
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.7", label="target (held out)")
  if labels is None:
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="samples x1 (t = 1)")
  else:
    for k in dict.fromkeys(int(v) for v in labels):
      pts = samples[np.asarray(labels) == k]
      ax.scatter(pts[:, 0], pts[:, 1], s=2, color=plt.cm.tab10(k % 10), label=f"class {k}")
  ax.set_title(title, fontsize=9)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=7, markerscale=3)
  fig.tight_layout()
  save(fig, path)


def draw_trajectories(ax, trajectory: np.ndarray, title: str = "",
                      reference: np.ndarray | None = None) -> None:
  """Draws `[T, n, 2]` trajectories: paths in olive, start (t = 0) black, end (t = 1) blue, target `[m, 2]` grey.

  The artists carry labels ("target", "path", "start x0 (t = 0)", "end x1 (t = 1)") for a legend.
  """
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", zorder=0, label="target (held out)")
  lines = ax.plot(trajectory[:, :, 0], trajectory[:, :, 1], c="olive", alpha=0.25, lw=0.6)
  if lines:
    lines[0].set_label("path")
  ax.scatter(trajectory[0, :, 0], trajectory[0, :, 1], s=3, c="black", zorder=3, label="start x0 (t = 0)")
  ax.scatter(trajectory[-1, :, 0], trajectory[-1, :, 1], s=3, c="tab:blue", zorder=3, label="end x1 (t = 1)")
  ax.set_title(title, fontsize=9)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def trajectories_figure(path: str, panels: list[tuple], reference: np.ndarray | None = None) -> None:
  """One row of trajectory panels side by side, with one legend below them.

  Each panel is `(title, [T, n, 2])` or `(title, [T, n, 2], reference [m, 2])`;
  `reference` (target points) is used for panels without their own.
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    title, traj = panel[0], panel[1]
    ref = panel[2] if len(panel) > 2 and panel[2] is not None else reference
    draw_trajectories(ax, traj, title, ref)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, markerscale=3, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  save(fig, path)


def nfe_curves(path: str, panels: list[tuple[str, dict[str, tuple[list, list]]]], title: str = "",
               annotations: dict[str, list[str]] | None = None) -> None:
  """One panel per metric `(ylabel, {series label: (nfe, values)})`: metric against NFE (log x).

  `annotations`: `{series label: one text per point}` written beside the points (e.g. "steps 25").
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (ylabel, series) in zip(axes[0], panels):
    for label, (nfe, values) in series.items():
      ax.plot(nfe, values, marker="o", ms=3, label=label)
      for x, y, text in zip(nfe, values, (annotations or {}).get(label, ())):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
    if annotations:
      ax.margins(x=0.15, y=0.1)   # room for the labels of the end points
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1 or annotations:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save(fig, path)


def images_figure(path: str, panels: list[tuple[str, np.ndarray]]) -> None:
  """One row of uint8 image mosaics `[H, W, C]` side by side, each with its title `(title, mosaic)`."""
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.7), squeeze=False)
  for ax, (title, mosaic) in zip(axes[0], panels):
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray" if mosaic.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  save(fig, path)


def against(path: str, x_label: str, xs, panels: list[tuple[str, list]], title: str = "") -> None:
  """One panel per `(title, ys)` of `ys` against `xs` (e.g. a metric against the guidance scale)."""
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.2 * max(len(panels), 1), 3), squeeze=False)
  for ax, (name, ys) in zip(axes[0], panels):
    ax.plot(xs, ys, "o-")
    ax.set_xlabel(x_label)
    ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  save(fig, path)
