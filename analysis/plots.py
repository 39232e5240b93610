"""Renderers for the spectral tables: each takes DataFrames and returns a matplotlib Figure.

They never show or save (the caller does: ``fig.savefig(...)``; the CLI uses the Agg backend).
Inputs are the frames of :mod:`memekit.analysis.spectra` (``spectrum_frame``, ``summary_frame``),
:mod:`memekit.analysis.priors` (boundaries) and :mod:`memekit.analysis.features`
(``feature_spectra``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .spectra import BAND_EDGES, BAND_NAMES

SNR_COLUMN = "snr"


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    # a bare Figure (not pyplot): no global state, nothing shown, works under any backend
    return Figure(figsize=(width, height), layout="constrained")


def plot_spectrum_heatmap(spectrum: pd.DataFrame, value: str = SNR_COLUMN,
                          summary: pd.DataFrame | None = None, boundaries: Sequence[int] | None = None) -> Figure:
    """``log10`` of ``value`` (``snr``, ``expected_power`` or ``data_power``) over t (y) and
    frequency (x, log scale), with the SNR = 1 contour, given ``summary`` the crossover curve
    f_c(t), and given ``boundaries`` ``(0, b_1, ..., T)`` the interval cuts as horizontal lines."""
    grid = spectrum.pivot(index="t", columns="frequency", values=value)
    t, f = grid.index.to_numpy(), grid.columns.to_numpy()
    with np.errstate(divide="ignore"):
        z = np.log10(grid.to_numpy())
    fig = _figure()
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(f, t, z, shading="nearest", cmap="magma")
    fig.colorbar(mesh, ax=ax, label=f"log10 of the {value.replace('_', ' ')}")
    if value == SNR_COLUMN and summary is None:
        ax.contour(f, t, z, levels=[0.0], colors="white", linewidths=1.0)
    if summary is not None:
        crossed = summary[summary["crossover_frequency"] > 0]
        ax.plot(crossed["crossover_frequency"], crossed["t"], color="cyan", lw=1.2, ls="--",
                label="crossover f_c(t)")
    for i, b in enumerate((boundaries or ())[1:-1]):
        ax.axhline(b, color="tab:green", lw=1.0, label="interval boundaries" if i == 0 else None)
    if summary is not None or boundaries:
        ax.legend(loc="upper right", fontsize=8)
    _frequency_scale(ax, "x", f)
    ax.set_xlabel("spatial frequency f (cycles / pixel)")
    ax.set_ylabel("time-step t")
    ax.set_title("log10 SNR(t, f); SNR = 1 on the crossover curve" if value == SNR_COLUMN
                 else f"log10 of the {value.replace('expected_power', 'expected power of x_t').replace('_', ' ')}"
                      " over t and f")
    return fig


def plot_crossover(summary: pd.DataFrame, proposed: Sequence[int], uniform: Sequence[int] | None = None) -> Figure:
    """Crossover frequency f_c(t) with the proposed interval boundaries (solid) and the uniform
    ones (dashed); ``proposed``/``uniform`` are ``(0, b_1, ..., T)``."""
    fig = _figure()
    ax = fig.add_subplot()
    crossed = summary[summary["crossover_frequency"] > 0]
    ax.plot(crossed["t"], crossed["crossover_frequency"], color="black", lw=1.5, label="f_c(t): SNR = 1")
    for i, b in enumerate(proposed[1:-1]):
        ax.axvline(b, color="tab:red", lw=1.5, label="proposed boundaries" if i == 0 else None)
    for i, b in enumerate((uniform or ())[1:-1]):
        ax.axvline(b, color="tab:blue", lw=1.2, ls="--", label="uniform boundaries" if i == 0 else None)
    buried = summary.loc[summary["crossover_frequency"] <= 0, "t"]
    if len(buried):  # f_c = 0: even the lowest frequency is below the noise
        ax.axvspan(buried.min(), buried.max(), color="gray", alpha=0.2, label="SNR < 1 at every f")
    _frequency_scale(ax, "y", crossed["crossover_frequency"].to_numpy())
    ax.set_xlabel("time-step t")
    ax.set_ylabel("crossover frequency (cycles / pixel)")
    ax.set_title("crossover frequency per time-step and interval boundaries")
    ax.legend(fontsize=8)
    return fig


def plot_band_fractions(summary: pd.DataFrame) -> Figure:
    """Left: share of E P_t's energy per band (stacked). Right: share of each band's energy that is
    still signal. Bands per :data:`~memekit.analysis.spectra.BAND_EDGES`."""
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    labels = [f"low (f < {BAND_EDGES[0]:g})", f"mid ({BAND_EDGES[0]:g} <= f < {BAND_EDGES[1]:g})",
              f"high (f >= {BAND_EDGES[1]:g})"]
    left.stackplot(summary["t"], *[summary[f"energy_{b}"] for b in BAND_NAMES], labels=labels, alpha=0.85)
    left.set_ylim(0, 1)
    left.set_title("energy of x_t per band")
    for b, label in zip(BAND_NAMES, labels, strict=True):
        right.plot(summary["t"], summary[f"signal_{b}"], label=label)
    right.set_ylim(0, 1)
    right.set_title("signal share of each band")
    for ax in (left, right):
        ax.set_xlabel("time-step t")
        ax.legend(fontsize=8, loc="center right")
    return fig


def plot_data_power(spectrum: pd.DataFrame, timesteps: Sequence[int] = (0, 250, 500, 750, 999)) -> Figure:
    """Log-log data spectrum P_0(f) and expected noisy spectra E P_t(f) at a few t, with the unit
    noise floor."""
    fig = _figure()
    ax = fig.add_subplot()
    first = spectrum[spectrum["t"] == spectrum["t"].min()]
    ax.loglog(first["frequency"], first["data_power"], color="black", lw=2, label="data P_0(f)")
    for t in timesteps:
        rows = spectrum[spectrum["t"] == t]
        if len(rows):
            ax.loglog(rows["frequency"], rows["expected_power"], lw=1, label=f"E P_t(f), t={t}")
    ax.axhline(1.0, color="gray", ls=":", label="noise power 1")
    _frequency_scale(ax, "x", first["frequency"].to_numpy())
    ax.set_xlabel("spatial frequency f (cycles / pixel)")
    ax.set_ylabel("power (orthonormal FFT, images in [-1, 1])")
    ax.legend(fontsize=8)
    return fig


def plot_feature_spectra(features: pd.DataFrame, value: str = "relative_log_amplitude") -> Figure:
    """One panel per t: ``value`` (``relative_log_amplitude`` or ``delta``) over omega/pi, one line
    per layer coloured by depth (input dashed)."""
    ts = sorted(features["t"].unique())
    fig = _figure(3.6 * len(ts) + 1.8, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(ts), sharey=True))
    depth_max = max(int(features["depth"].max()), 1)
    cmap = _colormap()
    for ax, t in zip(axes, ts, strict=True):
        for (depth, layer), rows in features[features["t"] == t].groupby(["depth", "layer"], sort=True):
            style = {"ls": "--", "color": "black"} if depth == 0 else {"color": cmap(depth / depth_max)}
            ax.plot(rows["frequency"], rows[value], lw=1, label=layer, **style)
        ax.set_title(f"t = {t}")
        ax.set_xlabel("frequency (omega / pi)")
    axes[0].set_ylabel("relative log amplitude" if value != "delta" else "change vs input")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=6, ncol=1 + len(labels) // 20)
    return fig


def _frequency_scale(ax, which: str, frequency: np.ndarray) -> None:
    """Log scale on axis ``which`` ("x" or "y") with ticks at 1/2^k cycles per pixel, as fractions."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    positive = frequency[frequency > 0]
    if not len(positive):
        return
    k = np.arange(int(np.floor(-np.log2(positive.max()))), int(np.ceil(-np.log2(positive.min()))) + 1)
    axis.set_major_locator(FixedLocator(2.0 ** -k))
    axis.set_major_formatter(lambda v, _pos: f"1/{round(1 / v)}" if v < 1 else f"{v:g}")
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def plot_channel_power(power: pd.DataFrame, frequency: np.ndarray, mean_power: np.ndarray) -> Figure:
    """Log-log data spectrum of every channel (thin lines; ``power``: ``channel, frequency,
    data_power`` rows) and their mean P_0(f) (black), with the unit noise floor."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (_, rows) in enumerate(power.groupby("channel")):
        ax.loglog(rows["frequency"], rows["data_power"], lw=0.7, alpha=0.6, color="tab:blue",
                  label="one channel" if i == 0 else None)
    ax.loglog(frequency, mean_power, color="black", lw=2, label="channel mean P_0(f)")
    ax.axhline(1.0, color="gray", ls=":", label="noise power 1")
    _frequency_scale(ax, "x", np.asarray(frequency))
    ax.set_xlabel("spatial frequency f (cycles / latent pixel)")
    ax.set_ylabel("power (orthonormal FFT, unit-scale latents)")
    ax.set_title(f"data spectrum of each of the {power['channel'].nunique()} channels")
    ax.legend(fontsize=8)
    return fig


def plot_spectra_comparison(power: pd.DataFrame, crossover: pd.DataFrame,
                            boundaries: dict[str, Sequence[int]] | None = None) -> Figure:
    """Two panels for data sets side by side (frames of
    :func:`memekit.analysis.reports.comparison_frames`): data spectra over cycles per image (the
    channels' range shaded) with the unit noise floor, and the crossover ``f_c(t)`` as a fraction of
    each grid's Nyquist frequency, with each data set's proposed interval boundaries."""
    fig = _figure(11.0, 4.3)
    left, right = fig.subplots(1, 2)
    for i, (name, rows) in enumerate(power.groupby("name", sort=False)):
        colour = f"C{i}"
        left.loglog(rows["k"], rows["data_power"], color=colour, lw=2, label=f"{name}: channel mean")
        if (rows["channel_max"] > rows["channel_min"]).any():
            left.fill_between(rows["k"], rows["channel_min"], rows["channel_max"], color=colour, alpha=0.2,
                              label=f"{name}: channel range")
        curve = crossover[crossover["name"] == name]
        right.plot(curve["t"], curve["fraction_of_nyquist"], color=colour, lw=1.5, label=name)
        for j, b in enumerate(((boundaries or {}).get(name) or ())[1:-1]):
            right.axvline(b, color=colour, ls="--", lw=1, label=f"{name}: proposed boundaries" if j == 0 else None)
    left.axhline(1.0, color="gray", ls=":", label="noise power 1")
    left.set_xlabel("spatial frequency (cycles per image)")
    left.set_ylabel("P_0 (orthonormal FFT, model units)")
    left.set_title("data spectrum")
    left.legend(fontsize=7)
    right.set_xlabel("time-step t")
    right.set_ylabel("f_c(t) / Nyquist of the model's grid")
    right.set_title("crossover frequency, where SNR(t, f) = 1")
    right.legend(fontsize=7)
    return fig


def plot_quality_cost(frame: pd.DataFrame) -> Figure:
    """KID and FID (mean +- SE over training seeds) against trajectory GMACs, one numbered point per
    row (``frame``: columns row, gmacs, kid, kid_se, fid, fid_se, as
    :func:`memekit.search.compare.quality_cost_frame` returns); the legend beside the axes names them,
    so labels never collide."""
    fig = _figure(11.0, 4.4)
    axes = fig.subplots(1, 2)
    for i, r in enumerate(frame.itertuples(index=False)):
        for ax, key in zip(axes, ("kid", "fid"), strict=True):
            se = getattr(r, f"{key}_se")
            ax.errorbar([r.gmacs], [getattr(r, key)], yerr=[0.0 if np.isnan(se) else se], fmt="os^D"[i // 10 % 4],
                        color=f"C{i % 10}", capsize=3, label=f"{i + 1}: {r.row}")
            ax.annotate(str(i + 1), (r.gmacs, getattr(r, key)), textcoords="offset points", xytext=(4, 3), fontsize=8)
    for ax, label in zip(axes, ("KID", "FID"), strict=True):
        ax.set(xlabel="trajectory GMACs (DDIM-50, batch 1)", ylabel=f"{label} (mean +- SE over training seeds)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig
