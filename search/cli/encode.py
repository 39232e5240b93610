"""``memekit encode``: encode an image data set into a latent file, once, resumably; a thin command
over :func:`memekit.analysis.encoding.run_encode`."""

from __future__ import annotations

import argparse
import json

from memekit.analysis.encode_job import EncodeJob
from memekit.analysis.latent_format import NORMALISATIONS

from .args import positive_int


def _job(args: argparse.Namespace) -> EncodeJob:
    return EncodeJob(args.data, args.autoencoder, args.out, resolution=args.resolution, batch_size=args.batch,
                     chunk_size=args.chunk, limit=args.limit, normalisation=args.normalisation, device=args.device,
                     overwrite=args.overwrite)


def _encode(args: argparse.Namespace) -> int:
    from memekit.analysis.encoding import encode_plan, run_encode
    from memekit.analysis.latents import read_latent_header

    job = _job(args)
    if args.dry_run:
        print(json.dumps(encode_plan(job), indent=2))
        return 0
    report = run_encode(job, progress=not args.quiet)
    header = read_latent_header(report.out)
    c, h, w = report.shape
    resumed = f"; {report.chunks_resumed} chunk(s) resumed" if report.chunks_resumed else ""
    print(f"encoded {report.count:,} images at {args.resolution} px into {c} x {h} x {w} latents -> {report.out} "
          f"in {report.total_seconds:.1f} s ({report.count / max(report.total_seconds, 1e-9):.1f} img/s{resumed}); "
          f"autoencoder {header.autoencoder.kind} {header.autoencoder.path}; normalisation "
          f"{header.meta['normalisation']['mode']} ({header.meta['normalisation']['measured_on']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    d = EncodeJob("", "", "x.npz")
    p = subparsers.add_parser(
        "encode", help="encode an image folder into a latent .npz (autoencoder offline, resumable)",
        description="Encode the images of DATA with a local autoencoder into a latent file that memekit spectrum, "
                    "train, search, sample and fid read like images. Chunks are written atomically next to OUT "
                    "(OUT.parts/): rerunning the same command resumes. The file records the autoencoder, the "
                    "resolution and the normalisation to unit scale (measured on the train split).")
    p.add_argument("data", metavar="DATA", help="image folder, .npz of images, or builtin:shapes[:N]")
    p.add_argument("--autoencoder", metavar="PATH", required=True,
                   help="a folder with TAEF2 weights (*encoder.pth, *decoder.pth) or a diffusers AutoencoderKL / "
                        "AutoencoderTiny saved with save_pretrained (needs 'pip install diffusers'); nothing downloads")
    p.add_argument("--out", metavar="LATENTS.npz", required=True, help="the latent file to write")
    p.add_argument("--resolution", type=positive_int, default=d.resolution,
                   help="image size in pixels (center crop, bicubic resize); a multiple of the autoencoder's factor")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="encode at most the first K images of each split, train and reference (default: all)")
    p.add_argument("--normalisation", choices=NORMALISATIONS, default=d.normalisation,
                   help="to unit scale: per-channel mean and std (channel), or one mean and std for all channels "
                        "(global, keeps the channels' relative power)")
    p.add_argument("--batch", type=positive_int, default=d.batch_size, help="images per autoencoder call")
    p.add_argument("--chunk", type=positive_int, default=d.chunk_size,
                   help="images per resumable chunk (written atomically)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved job as JSON (counts, latent shape, autoencoder and its MACs per image, "
                        "chunks already done) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_encode)
