"""The latent benchmark on UTKFace at 128 px through TAEF2 (32 x 16 x 16 latents), three parts:

``spectra``: the spectra ``memekit spectrum`` measured on the images and on their latents, side by
side, and the priors each proposes. Reads two spectrum folders (and the latent file, for its
per-channel normalisation), writes one comparison figure and ``summary.json`` into ``--out``:

    python benchmarks/latent_utk128.py spectra --pixels PIX_DIR --latents LAT_DIR \\
        --latent-file LATENTS.npz --out benchmarks/latent_utk128

``grid``: decoded samples of a latent run next to real faces of the reference split (one PNG);
``cost``: wall-clock seconds per image of a 50-step DDIM trajectory of the run's experts, of the
decoder and of the encoder, beside their MACs (one JSON line):

    python benchmarks/latent_utk128.py grid RUN --images FOLDER --out samples_vs_real.png
    python benchmarks/latent_utk128.py cost RUN

``floor``: what a latent model could score at best with the same n: FID/KID of the autoencoder's
reconstructions of training images, and of the training images themselves, against the reference
split:

    python benchmarks/latent_utk128.py floor LATENTS.npz --images FOLDER --json floor.json

``splits``: the conv/attention split each study recommends (its top trials' attention shares and their rank
correlation with the proxy loss), pixels vs latents, as ``attention_splits.png`` and ``splits.json``:

    python benchmarks/latent_utk128.py splits --pixels PIXEL_EXPORT --latents LATENT_EXPORT --out DIR

In ``spectra``, besides the two folders, one variant is evaluated in closed form: the latents under **global**
normalisation (one mean and one std for all channels, ``memekit encode --normalisation global``).
The file's per-channel normalisation ``x_c = (z_c - m_c) / s_c`` only rescales channel c, and the
spectra drop the DC ring, so the global variant's channel spectra are ``s_c^2 P_c(f) / s^2`` with
``s^2 = mean_c (s_c^2 + (m_c - m)^2)`` the variance over all channels (``m = mean_c m_c``): no
second encoding is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")

from memekit.analysis.data import spec_for_data  # noqa: E402
from memekit.analysis.latents import read_latent_header  # noqa: E402
from memekit.analysis.plots import plot_spectra_comparison  # noqa: E402
from memekit.analysis.priors import prior_frame, prior_spec  # noqa: E402
from memekit.analysis.reports import comparison_frames, read_profile, sample_timesteps  # noqa: E402
from memekit.analysis.spectra import SpectralProfile, spectral_slope  # noqa: E402
from memekit.space import load_spec  # noqa: E402
from memekit.space.files import atomic_write_json  # noqa: E402


def global_variant(profile: SpectralProfile, shift: np.ndarray, scale: np.ndarray) -> SpectralProfile:
    """The latents' profile under one global mean and std instead of per-channel ones (docstring)."""
    variance = float(np.mean(scale.astype(np.float64) ** 2 + (shift - shift.mean()) ** 2))
    factor = (scale.astype(np.float64) ** 2)[:, None] / variance  # (C, 1)
    channels, corners = profile.channel_power * factor, profile.channel_corner_power * factor
    return dataclasses.replace(profile, channel_power=channels, data_power=channels.mean(axis=0),
                               channel_corner_power=corners, corner_power=corners.mean(axis=0))


def crossover_facts(profile: SpectralProfile) -> dict[str, object]:
    """When the crossover leaves Nyquist and when nothing is above the noise; f_c at a few t."""
    f_c, state = profile.crossover()
    leaves = int(np.argmax(state != "above")) if (state != "above").any() else None
    buried = int(np.argmax(state == "below")) if (state == "below").any() else None
    return {"first_t_below_nyquist": leaves, "first_t_all_below_noise": buried,
            "f_c_cycles_per_image": {int(t): round(float(f_c[t] * profile.resolution), 3)
                                     for t in sample_timesteps(profile.timesteps)},
            "f_c_fraction_of_nyquist": {int(t): round(float(f_c[t] / 0.5), 3)
                                        for t in sample_timesteps(profile.timesteps)}}


def prior_facts(spec_path: Path | None, profile: SpectralProfile, spec=None) -> dict[str, object]:
    spec = spec or load_spec(spec_path)
    frame = prior_frame(spec, profile)
    return {"boundaries": list(spec.boundaries), "p": [round(p, 4) for p in spec.soft_assignment],
            "shares": [[round(s, 3) for s in e.effective_attention_share()] for e in spec.experts],
            "buried": [[round(float(row[f"buried_stage{s}"]), 2) for s in range(spec.experts[0].n_stages)]
                       for _, row in frame.iterrows()]}


def spectra(args: argparse.Namespace) -> None:
    pixels, latents = read_profile(args.pixels), read_profile(args.latents)
    header = read_latent_header(args.latent_file)
    glob = global_variant(latents, header.normalisation.shift, header.normalisation.scale)
    base = spec_for_data("meme-paper", str(args.latent_file))
    glob_prior = prior_spec(glob, 4, base)
    profiles = {"pixels 128 px": pixels, "latents, per-channel norm.": latents, "latents, global norm.": glob}
    power, crossover = comparison_frames(profiles)
    bounds = {"pixels 128 px": load_spec(args.pixels / "prior_spec.json").boundaries,
              "latents, per-channel norm.": load_spec(args.latents / "prior_spec.json").boundaries,
              "latents, global norm.": glob_prior.boundaries}
    args.out.mkdir(parents=True, exist_ok=True)
    plot_spectra_comparison(power, crossover, bounds).savefig(args.out / "spectra_pixels_vs_latents.png", dpi=90)
    slopes = {name: round(spectral_slope(p.data_power, p.frequency), 3) for name, p in profiles.items()}
    channel_slopes = [spectral_slope(p, latents.frequency) for p in latents.channel_power]
    summary = {
        "images": {"pixels": pixels.n_images, "latents": latents.n_images},
        "slope_of_channel_mean": slopes,
        "latent_channel_slopes_min_median_max": [round(min(channel_slopes), 3),
                                                 round(float(np.median(channel_slopes)), 3),
                                                 round(max(channel_slopes), 3)],
        "power_at_lowest_and_highest_ring": {name: [round(float(p.data_power[0]), 4), round(float(p.data_power[-1]), 4)]
                                             for name, p in profiles.items()},
        "crossover": {name: crossover_facts(p) for name, p in profiles.items()},
        "priors": {"pixels 128 px": prior_facts(args.pixels / "prior_spec.json", pixels),
                   "latents, per-channel norm.": prior_facts(args.latents / "prior_spec.json", latents),
                   "latents, global norm.": prior_facts(None, glob, glob_prior)},
    }
    atomic_write_json(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


def _decoded_run(run: Path):
    from memekit.analysis.latents import latent_decoder
    from memekit.search.checkpoint import checkpoint_latent
    from memekit.search.sampling import load_model

    model, spec, state = load_model(run)
    record = checkpoint_latent(state)
    if record is None:
        raise SystemExit(f"{run} was not trained on latents")
    return model, spec, record, latent_decoder(record)


def grid(args: argparse.Namespace) -> None:
    from memekit.analysis.data import load_images
    from memekit.search.sampling import sample_images, save_comparison_grid

    model, spec, record, decoder = _decoded_run(args.run)
    samples = sample_images(model, spec, args.n, steps=args.steps, seed=0, batch=args.n, progress=False,
                            decoder=decoder)
    real = load_images(str(args.images), int(record["resolution"]), split="reference", limit=args.n, progress=False)
    save_comparison_grid(samples, real, args.out, scale=1, titles=("decoded samples", "real faces (reference split)"))
    print(f"wrote {args.out}")


def cost(args: argparse.Namespace) -> None:
    import time

    import torch

    from memekit.analysis.autoencoders import autoencoder_macs
    from memekit.search.sampling import sample_batches
    from memekit.space import spec_cost

    model, spec, record, decoder = _decoded_run(args.run)
    side = int(record["resolution"])
    start = time.perf_counter()
    x = torch.cat(list(sample_batches(model, spec, args.n, steps=args.steps, batch=args.n, progress=False)))
    trajectory = (time.perf_counter() - start) / args.n
    start = time.perf_counter()
    decoder(x)
    decode = (time.perf_counter() - start) / args.n
    start = time.perf_counter()
    with torch.no_grad():
        decoder.autoencoder.encode(torch.zeros(args.n, 3, side, side))
    encode = (time.perf_counter() - start) / args.n
    macs = autoencoder_macs(decoder.autoencoder, side)
    print(json.dumps({"threads": torch.get_num_threads(), "n": args.n, "steps": args.steps,
                      "trajectory_s_per_image": round(trajectory, 4), "decode_s_per_image": round(decode, 4),
                      "encode_s_per_image": round(encode, 4),
                      "trajectory_macs": spec_cost(spec, args.steps).trajectory_macs,
                      "decode_macs": macs["decode"], "encode_macs": macs["encode"]}))


def floor(args: argparse.Namespace) -> None:
    """What a latent model could score at best, at the run's n: FID/KID of the autoencoder's
    reconstructions of training images, and of the training images themselves, against the reference
    split (the protocol and Inception features ``memekit fid RUN data:FOLDER`` scores samples with)."""
    import torch

    from memekit.analysis.fid import features, frechet_distance
    from memekit.analysis.kid import kid
    from memekit.analysis.latents import latent_decoder, load_latents

    latents, header = load_latents(args.latents, split="train", limit=args.n)
    record = header.record()
    side = int(record["resolution"])
    images = f"data:{args.images}"
    reference = features(images, resolution=side, split="reference")
    sets = {"reconstructions": features(latent_decoder(record)(torch.from_numpy(latents))),
            "training images": features(images, args.n, resolution=side, split="train")}
    facts = {"n": len(latents), "n_reference": reference.n, "resolution": side}
    for name, feats in sets.items():
        kid_mean, kid_std = kid(feats, reference)
        fid_value = frechet_distance(feats.statistics.mu, feats.statistics.sigma, reference.statistics.mu,
                                     reference.statistics.sigma)
        facts[name] = {"fid": round(fid_value, 3), "kid_mean": round(kid_mean, 5), "kid_std": round(kid_std, 5)}
        print(f"{name}: FID {fid_value:.2f}  KID {kid_mean:.4f}", flush=True)
    if args.json:
        atomic_write_json(args.json, facts)
    print(json.dumps(facts))


BINS = 10  # time-step bins of the splits' profiles (0-99, ..., 900-999)


def study_shares(trials_csv: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Each finished trial's validation loss, cost and warm start, and its attention share as a function of
    t (trial x time-step bin x stage: the share of the expert whose interval holds the bin's middle time-step;
    intervals differ between trials, so expert k alone would not name the same noise levels), read from an
    export's ``trials.csv``."""
    frame = pd.read_csv(trials_csv)
    frame = frame[frame["state"] == "COMPLETE"].reset_index(drop=True)
    shares = []
    for text in frame["user_attrs_spec"]:
        spec = json.loads(text)
        edges = spec["diffusion"]["timesteps"] * (np.arange(BINS) + 0.5) / BINS
        owner = [next(k for k, (lo, hi) in enumerate(spec["intervals"]) if lo <= t < hi) for t in edges]
        shares.append([spec["experts"][k]["attention_share"] for k in owner])
    rows = pd.DataFrame({"trial": frame["number"], "val_loss": frame["values_val_loss"],
                         "gmacs": frame["values_trajectory_gmacs"],
                         "warm_start": frame["user_attrs_warm_start"].fillna("")})
    return rows, np.array(shares)


def split_facts(rows: pd.DataFrame, shares: np.ndarray, top: int) -> dict[str, object]:
    """The top trials' mean attention share per (t bin, stage) and per t bin (over stages); over all trials,
    the Spearman correlation of each bin's stage-mean share with the validation loss (negative: more attention
    there, lower loss) and its p-value; the warm starts' losses and ranks."""
    from scipy.stats import spearmanr

    best = np.argsort(rows["val_loss"].to_numpy())[:top]
    per_bin = shares.mean(axis=2)
    tests = [spearmanr(per_bin[:, b], rows["val_loss"]) if np.ptp(per_bin[:, b]) > 0 else (np.nan, np.nan)
             for b in range(per_bin.shape[1])]
    warm = rows[rows["warm_start"] != ""].set_index("warm_start")["val_loss"]
    return {"trials": len(rows), "top": [int(t) for t in rows["trial"].to_numpy()[best]],
            "t_bins": [f"{int(b * 1000 / BINS)}-{int((b + 1) * 1000 / BINS) - 1}" for b in range(BINS)],
            "top_share_per_bin_and_stage": shares[best].mean(axis=0).round(3).tolist(),
            "top_share_per_bin": per_bin[best].mean(axis=0).round(3).tolist(),
            "all_share_per_bin": per_bin.mean(axis=0).round(3).tolist(),
            "spearman_share_vs_loss": [round(float(r), 2) for r, _ in tests],
            "spearman_p": [float(f"{p:.2g}") for _, p in tests],
            "warm_starts": {k: round(float(v), 5) for k, v in warm.items()},
            "warm_start_ranks": {k: int((rows["val_loss"] < v).sum()) + 1 for k, v in warm.items()}}


def paired_losses(pixels_csv: Path, latents_csv: Path) -> dict[str, object]:
    """The configurations both studies trained (the same sampled parameters: warm starts and a sampler's
    seeded start-up trials coincide) and the Spearman correlation of their two validation losses."""
    from scipy.stats import spearmanr

    frames = [pd.read_csv(path) for path in (pixels_csv, latents_csv)]
    frames = [f[f["state"] == "COMPLETE"] for f in frames]
    params = sorted(set.intersection(*(set(c for c in f.columns if c.startswith("params_")) for f in frames)))
    keyed = [f.assign(key=f[params].round(6).astype(str).agg("|".join, axis=1)) for f in frames]
    both = keyed[0].merge(keyed[1], on="key", suffixes=("_pixels", "_latents"))
    rho, p = (spearmanr(both["values_val_loss_pixels"], both["values_val_loss_latents"]) if len(both) > 2
              else (np.nan, np.nan))
    return {"trials": [int(t) for t in both["number_pixels"]], "spearman": round(float(rho), 2),
            "p": float(f"{p:.2g}"), "pixel_losses": both["values_val_loss_pixels"].round(5).tolist(),
            "latent_losses": both["values_val_loss_latents"].round(5).tolist()}


def splits(args: argparse.Namespace) -> None:
    """The conv/attention split the search recommends, pixels vs latents: the top trials' attention share
    against t (over stages, and per stage), each bin's rank correlation with the proxy loss, a figure."""
    from matplotlib.figure import Figure

    facts, tables = {}, {}
    for folder in (args.pixels, args.latents):
        if not (folder / "trials.csv").is_file():
            raise SystemExit(f"{folder / 'trials.csv'} not found: pass the folder `memekit export` wrote")
    for label, folder in (("pixels", args.pixels), ("latents", args.latents)):
        rows, shares = study_shares(folder / "trials.csv")
        facts[label] = split_facts(rows, shares, args.top)
        tables[label] = np.array(facts[label]["top_share_per_bin_and_stage"])
    facts["same_configurations"] = paired_losses(args.pixels / "trials.csv", args.latents / "trials.csv")
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    t = (np.arange(BINS) + 0.5) * 1000 / BINS
    for i, label in enumerate(tables):
        axes[0].plot(t, facts[label]["top_share_per_bin"], "o-", color=f"C{i}", label=f"{label}: top {args.top}")
        axes[0].plot(t, facts[label]["all_share_per_bin"], "--", color=f"C{i}", label=f"{label}: all trials")
    axes[0].set(xlabel="time-step t", ylabel="attention share (mean over stages)", ylim=(0, 1),
                title="the split the search keeps")
    axes[0].legend(fontsize=7)
    for ax, (label, table) in zip(axes[1:], tables.items(), strict=True):
        image = ax.imshow(table.T, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                          extent=(0, 1000, -0.5, table.shape[1] - 0.5))
        ax.set(title=f"{label}: top {args.top}, per stage", xlabel="time-step t", ylabel="stage (0 = full size)",
               yticks=range(table.shape[1]))
    fig.colorbar(image, ax=axes[1:], shrink=0.8, label="attention share")
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "attention_splits.png", dpi=110)
    atomic_write_json(args.out / "splits.json", facts)
    print(json.dumps(facts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("spectra", help="pixels vs latents: figure and summary.json")
    p.add_argument("--pixels", type=Path, required=True, help="memekit spectrum folder of the images")
    p.add_argument("--latents", type=Path, required=True, help="memekit spectrum folder of the latents")
    p.add_argument("--latent-file", type=Path, required=True, help="the latent .npz (its normalisation)")
    p.add_argument("--out", type=Path, required=True, help="folder for the figure and summary.json")
    p.set_defaults(part_fn=spectra)
    p = sub.add_parser("grid", help="decoded samples of a latent run next to real faces")
    p.add_argument("run", type=Path, help="run folder or checkpoint trained on latents")
    p.add_argument("--images", type=Path, required=True, help="the image folder the latents were encoded from")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--n", type=int, default=32, help="images per side (default 32)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.set_defaults(part_fn=grid)
    p = sub.add_parser("cost", help="seconds per image: trajectory vs decode vs encode")
    p.add_argument("run", type=Path, help="run folder or checkpoint trained on latents")
    p.add_argument("--n", type=int, default=32, help="images (default 32)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.set_defaults(part_fn=cost)
    p = sub.add_parser("floor", help="FID/KID of reconstructions and of training images vs the reference")
    p.add_argument("latents", type=Path, help="the latent .npz the run was trained on")
    p.add_argument("--images", type=Path, required=True, help="the image folder the latents were encoded from")
    p.add_argument("--n", type=int, default=1000, help="training images of each set (default 1000)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    p.set_defaults(part_fn=floor)
    p = sub.add_parser("splits", help="the attention shares the search recommends, pixels vs latents")
    p.add_argument("--pixels", type=Path, required=True, help="export folder of the pixel study (trials.csv)")
    p.add_argument("--latents", type=Path, required=True, help="export folder of the latent study (trials.csv)")
    p.add_argument("--top", type=int, default=5, help="trials by validation loss to average (default 5)")
    p.add_argument("--out", type=Path, required=True, help="folder for attention_splits.png and splits.json")
    p.set_defaults(part_fn=splits)
    args = parser.parse_args()
    args.part_fn(args)


if __name__ == "__main__":
    main()
