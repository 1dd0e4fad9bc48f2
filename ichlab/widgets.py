"""An ipywidgets slice viewer for a CT series: a slice slider, a window preset and a channel view.

``render_slice`` turns one HU slice into the image the viewer shows, so the same pixels can be
checked without a browser; ``slice_viewer`` wraps it in widgets for a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichlab.windows import CHANNEL_ORDER, WINDOWS, apply_window, stack_windows

# Views the viewer offers: one window in grey, the three channels as one RGB image (what the
# model sees, brain in red, subdural in green, bone in blue), or the three side by side.
VIEWS = tuple(WINDOWS) + ("channels as RGB", "channels side by side")


def render_slice(hu: np.ndarray, view: str = "brain") -> np.ndarray:
    """Return the image the viewer shows for one HU slice.

    Parameters
    ----------
    hu
        (H, W) HU slice.
    view
        One of ``VIEWS``.

    Returns
    -------
    numpy.ndarray
        float32 in [0, 1]: (H, W) for one window, (H, W, 3) for ``"channels as RGB"``, and
        (H, 3 * W) for ``"channels side by side"`` (in ``CHANNEL_ORDER``).

    Raises
    ------
    ValueError
        For an unknown view or an input that is not (H, W).
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"expected one HU slice shaped (H, W), got shape {hu.shape}")
    if view in WINDOWS:
        return apply_window(hu, *WINDOWS[view])
    channels = stack_windows(hu, CHANNEL_ORDER)  # (3, H, W)
    if view == "channels as RGB":
        return np.moveaxis(channels, 0, -1)  # (H, W, 3)
    if view == "channels side by side":
        return np.concatenate(list(channels), axis=1)  # (H, 3 * W)
    raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")


def slice_viewer(
    volume_hu: np.ndarray,
    *,
    positions_mm: Sequence[float] | None = None,
    title: str = "CT series",
    view: str = "brain",
    figure_inches: float = 4.0,
):
    """Build a notebook viewer: slice slider, view preset, and the rendered slice.

    Parameters
    ----------
    volume_hu
        (N, H, W) HU slices in spatial order, for example ``load_hu`` over an ordered series.
    positions_mm
        Position of each slice along the slice normal, shown in the plot title.
    title
        Start of the plot title.
    view
        Initial view, one of ``VIEWS``.
    figure_inches
        Height of the plot in inches; side-by-side views are three times as wide.

    Returns
    -------
    ipywidgets.VBox
        Display it as the last expression of a cell.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    volume_hu = np.asarray(volume_hu)
    if volume_hu.ndim != 3 or len(volume_hu) == 0:
        raise ValueError(f"expected a series shaped (N, H, W) with N >= 1, got shape {volume_hu.shape}")
    if positions_mm is not None and len(positions_mm) != len(volume_hu):
        raise ValueError(f"positions_mm has {len(positions_mm)} values for {len(volume_hu)} slices")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")

    slider = widgets.IntSlider(value=len(volume_hu) // 2, min=0, max=len(volume_hu) - 1, description="slice")
    preset = widgets.Dropdown(options=VIEWS, value=view, description="view")
    output = widgets.Output()

    def draw(*_):
        index = slider.value
        image = render_slice(volume_hu[index], preset.value)
        width = figure_inches * (3 if preset.value == "channels side by side" else 1)
        figure, axes = plt.subplots(figsize=(width, figure_inches), dpi=72)
        axes.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        where = f", {positions_mm[index]:.1f} mm" if positions_mm is not None else ""
        axes.set_title(f"{title}: slice {index} of {len(volume_hu)}{where} ({preset.value})")
        axes.set_xlabel("column (pixel)")
        axes.set_ylabel("row (pixel)")
        with output:
            output.clear_output(wait=True)
            display(figure)
        plt.close(figure)

    slider.observe(draw, names="value")
    preset.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([slider, preset]), output])
