"""The model card of a packaged run: its metadata as data, then the card's text.

:func:`card_metadata` gathers what a reader of a packaged model needs (the intervals as time-steps,
log-SNR, Wan 2.2 ``boundary_ratio`` and SDXL ``denoising_end``; attention shares per expert and
stage; the preconditioning; parameters and MACs; the training data, budget and seed; every metric
with its protocol, weights, n and seeds; the commands that reproduce it) as one JSON-ready dict;
:func:`render_model_card` turns it into ``README.md`` with that dict as YAML front matter and a few
tables. Nothing here reads or writes files.

Interval vocabulary, for expert n owning time-steps ``[start_n, end_n)`` of T (0-indexed, small t
= low noise), ``alpha_bar_t`` memekit's schedule and ``log_snr(t) = log(alpha_bar_t / (1 - alpha_bar_t))``:

- ``log_snr``: ``[log_snr(start_n), log_snr(end_n - 1)]``, from its cleanest to its noisiest t;
- a hand-over at cut ``b`` (the expert above owns ``t >= b``): ``boundary_ratio = b / T`` (Wan 2.2
  switches to its high-noise expert at ``t >= boundary_ratio * T``), ``denoising_end = 1 - b / T``
  (SDXL's base model runs while ``t >= round((1 - denoising_end) T)``, and the refiner's
  ``denoising_start`` is the same number), and the expert above owns ``log_snr <= log_snr(b)``.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import numpy as np

from memekit.space import MemeSpec, check_spec
from memekit.space.cost import COUNTER_NAME
from memekit.space.diffusion import Diffusion
from memekit.space.errors import MemekitError

# the training settings a reproduction must repeat (memekit train's options), in its help's order
TRAIN_OPTIONS = ("data", "images", "batch", "lr", "warmup_images", "weight_decay", "grad_clip", "ema_decay",
                 "mixed_precision", "seed", "hflip", "data_limit")


class MetricsFileError(MemekitError, ValueError):
    """A ``--metrics`` file is not a ``memekit fid --json`` file of the packaged checkpoint."""


# ---- intervals -----------------------------------------------------------------------------------
def log_snr(alpha_bar: float) -> float:
    """``log(alpha_bar / (1 - alpha_bar))``, the log signal-to-noise ratio of ``x_t = a x_0 + s eps``;
    ``-inf`` at ``alpha_bar = 0`` (pure noise, as a schedule's last step can be) and ``+inf`` at 1."""
    if alpha_bar <= 0.0:
        return -math.inf
    if alpha_bar >= 1.0:
        return math.inf
    return math.log(alpha_bar) - math.log1p(-alpha_bar)


def _rounded(value: float) -> float | None:
    """``value`` to 4 decimals for the card; None for an infinite log-SNR (JSON has no infinity)."""
    return round(value, 4) if math.isfinite(value) else None


def interval_table(spec: MemeSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per expert: ``timesteps [start, end)`` and ``log_snr`` (module docstring); per hand-over: the cut
    ``t`` as ``boundary_ratio``, ``denoising_end`` and ``log_snr`` (None where it is infinite)."""
    alpha_bar = Diffusion(spec.diffusion).alpha_bar
    T = spec.diffusion.timesteps
    experts = [{"expert": n, "timesteps": [lo, hi],
                "log_snr": [_rounded(log_snr(alpha_bar[lo])), _rounded(log_snr(alpha_bar[hi - 1]))]}
               for n, (lo, hi) in enumerate(spec.intervals)]
    cuts = [{"t": b, "boundary_ratio": b / T, "denoising_end": 1 - b / T, "log_snr": _rounded(log_snr(alpha_bar[b]))}
            for b in spec.boundaries[1:-1]]
    return experts, cuts


# ---- metrics -------------------------------------------------------------------------------------
def _metric(name: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {"name": name, "value": value, **fields}


def metrics_entries(data: dict[str, Any], source: str, step: int) -> list[dict[str, Any]]:
    """The metrics of one ``memekit fid --json`` file, each with its protocol, weights, n and seeds.
    A run's file must score the packaged checkpoint (``step``); one of two image sets is taken as is."""
    if not isinstance(data, dict) or not ("fid_mean" in data or "fid" in data):
        raise MetricsFileError(f"{source} is not a memekit fid --json file (no 'fid_mean' or 'fid')")
    if "fid_mean" not in data:  # two image sets: memekit fid A B --json
        common = dict(protocol=data.get("protocol"), weights=data.get("weights_label"), n=data.get("n_a"),
                      n_reference=data.get("n_b"), samples=data.get("a"), reference=data.get("b"),
                      seeds=None, file=source, note="image sets: the sampling seed is not recorded")
        out = [_metric("FID", data["fid"], **common)]
        if data.get("kid_mean") is not None:
            out.append(_metric("KID", data["kid_mean"], std_over_subsets=data.get("kid_std"),
                               kid_subsets=data.get("kid_subsets"), kid_subset_size=data.get("kid_subset_size"),
                               **common))
        return out
    if data.get("checkpoint_step") not in (None, step):
        raise MetricsFileError(f"{source} scores checkpoint step {data['checkpoint_step']}, the package holds step "
                               f"{step}: measure this checkpoint with memekit fid RUN ... --json, or package that one")
    per_seed = data.get("per_seed") or []
    common = dict(protocol=data.get("protocol"), weights=data.get("weights_label"), n=data.get("n"),
                  n_reference=data.get("n_ref"), reference=data.get("reference") or data.get("b"),
                  sampler="ddim", steps=data.get("steps"), seeds=[s.get("seed") for s in per_seed],
                  sampling_seeds=[s.get("sampling_seed") for s in per_seed],
                  checkpoint_step=data.get("checkpoint_step"),
                  file=source)
    out = [_metric("FID", data["fid_mean"], std_over_seeds=data.get("fid_std"),
                   per_seed=[s.get("fid") for s in per_seed], **common),
           _metric("KID", data.get("kid_mean"), std_over_seeds=data.get("kid_std"),
                   per_seed=[s.get("kid_mean") for s in per_seed], kid_subsets=data.get("kid_subsets"),
                   kid_subset_size=data.get("kid_subset_size"), **common)]
    if data.get("lsd_mean") is not None:
        out.append(_metric("LSD (dB)", data["lsd_mean"], std_over_seeds=data.get("lsd_std"),
                           per_seed=[s.get("lsd") for s in per_seed], **common))
    return out


# ---- commands ------------------------------------------------------------------------------------
def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def train_command(config: dict[str, Any], spec_path: str = "spec.json", out: str = "RUN") -> str:
    """The ``memekit train`` command that repeats a run's training settings."""
    words = ["memekit", "train", spec_path]
    for key in TRAIN_OPTIONS:
        value = config.get(key)
        if key == "hflip":
            words += [] if value in (None, True) else ["--no-hflip"]
        elif value is not None and not (key == "mixed_precision" and value == "no"):
            words += [_flag(key), str(value)]
    return shlex.join(words + ["--out", out])


def fid_command(run: str, metric: dict[str, Any]) -> str | None:
    """The ``memekit fid`` command of a run's metric (None for image sets)."""
    if metric.get("seeds") is None:
        return None
    words = ["memekit", "fid", run, str(metric["reference"]), "--n", str(metric["n"]), "--steps", str(metric["steps"]),
             "--seeds", str(len(metric["seeds"])), "--protocol", str(metric["protocol"]), "--json", "metrics.json"]
    return shlex.join(words)


# ---- the metadata --------------------------------------------------------------------------------
def card_metadata(spec: MemeSpec, state: dict[str, Any], config: dict[str, Any], run: str,
                  metrics: list[dict[str, Any]], steps: int, latent: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the card says, JSON-ready (module docstring). ``state``: the loaded checkpoint;
    ``config``: its training config; ``metrics``: :func:`metrics_entries` of every file; ``steps``:
    the DDIM steps the costs are counted for."""
    experts, cuts = interval_table(spec)
    cost = check_spec(spec, steps)
    for row, e, c, p in zip(experts, spec.experts, cost.experts, spec.soft_assignment, strict=True):
        row.update(soft_assignment=p, attention_share=list(e.attention_share),
                   attention_share_built=[round(s, 4) for s in e.effective_attention_share()],
                   params=c.params, macs_per_step=c.macs, steps_of_trajectory=c.steps)
    d = spec.diffusion
    preconditioning = {"mode": d.preconditioning, "data_std": d.data_std,
                       "statistics": {k: " x ".join(map(str, np.shape(v))) + " values, in each expert's config.json"
                                      for k, v in d.to_dict().items() if k.startswith("data_") and k != "data_std"}}
    first = spec.experts[0]
    package_words = ["memekit", "package", run, "OUT", "--steps", str(steps)]
    for m in metrics:
        if m["file"] not in package_words:
            package_words += ["--metrics", m["file"]]
    reproduce = {"train": train_command(config),
                 "sample": shlex.join(["memekit", "sample", run, "--out", "samples", "--n", "16", "--steps",
                                       str(steps), "--seed", "0"]),
                 "package": shlex.join(package_words),
                 "metrics": sorted({c for m in metrics if (c := fid_command(run, m)) is not None})}
    return {
        "license": "",
        "library_name": "diffusers",
        "pipeline_tag": "unconditional-image-generation",
        "tags": ["memekit", "multi-expert", "diffusion", "unconditional-image-generation"],
        "memekit": {
            "spec": spec.name or "unnamed", "experts": spec.n_experts, "image_channels": first.image_channels,
            "resolution": first.resolution, "timesteps": d.timesteps, "schedule": d.schedule,
            "prediction": d.prediction, "preconditioning": preconditioning, "out_of_interval": spec.out_of_interval,
            "intervals": experts, "hand_overs": cuts,
            "cost": {"params": cost.params, "macs_per_step": round(cost.mean_macs_per_step),
                     "macs_per_trajectory": cost.trajectory_macs, "sampling_steps": steps, "batch": 1,
                     "counter": COUNTER_NAME},
            "training": {**{k: config.get(k) for k in TRAIN_OPTIONS}, "step": int(state["step"]),
                         "images_seen": int(state.get("images_seen", 0)),
                         "images_per_expert": [int(v) for v in state.get("images_per_expert", [])],
                         "checkpoint": state["path"], "weights": "EMA"},
            "latent": latent,
            "metrics": metrics,
            "reproduce": reproduce,
        },
    }


# ---- the text ------------------------------------------------------------------------------------
def to_yaml(value: Any, indent: int = 0) -> str:
    """Block YAML of JSON data: mappings and lists of mappings in block style, lists of scalars in flow
    style, scalars as JSON (a JSON scalar is a YAML scalar; NaN becomes null)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict) and item or isinstance(item, list) and any(isinstance(i, dict) for i in item):
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and any(isinstance(i, dict) for i in value):
        items = []
        for item in value:
            body = to_yaml(item, indent + 2) if isinstance(item, dict) else f"{pad}  {_scalar(item)}"
            items.append(f"{pad}- {body.lstrip()}")
        return "\n".join(items)
    return pad + _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return json.dumps(value)


def _snr(value: float | None) -> str:
    return "infinite" if value is None else f"{value:+.2f}"


def _macs(value: float) -> str:
    return f"{value / 1e9:.3f} GMACs" if value >= 1e8 else f"{value / 1e6:.2f} MMACs"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _metrics_section(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return ("No metrics were given. Measure the packaged checkpoint with `memekit fid RUN REFERENCE --n N "
                "--seeds S --json FILE` and package again with `--metrics FILE`.")
    rows = [[m["name"], _fmt(m["value"]), _fmt(m.get("std_over_seeds")),
             "n/a" if m.get("seeds") is None else len(m["seeds"]), m.get("n"), m.get("n_reference"),
             m.get("reference"), m.get("steps", "n/a"), m.get("protocol"), m.get("weights")] for m in metrics]
    return _table(["metric", "mean", "std over seeds", "seeds", "n per seed", "n reference", "reference",
                   "DDIM steps", "protocol", "Inception weights"], rows)


def render_model_card(meta: dict[str, Any], out_name: str = "OUT") -> str:
    """``README.md``: ``meta`` as YAML front matter, then how to load it, the experts, hand-overs, cost,
    training, metrics and the commands that reproduce it."""
    m = meta["memekit"]
    pre = m["preconditioning"]
    cost = m["cost"]
    train = m["training"]
    experts = _table(["expert", "t", "log-SNR", "p_n", "attention share per stage (built)", "params", "MACs / step",
                      f"steps of {cost['sampling_steps']}"],
                     [[e["expert"], f"[{e['timesteps'][0]}, {e['timesteps'][1]})",
                       f"{_snr(e['log_snr'][0])} .. {_snr(e['log_snr'][1])}", f"{e['soft_assignment']:.3g}",
                       " / ".join(f"{s:.3g}" for s in e["attention_share_built"]), f"{e['params']:,}",
                       _macs(e["macs_per_step"]), e["steps_of_trajectory"]] for e in m["intervals"]])
    cuts = (_table(["t", "boundary_ratio (Wan 2.2)", "denoising_end (SDXL)", "log-SNR"],
                   [[c["t"], f"{c['boundary_ratio']:.6g}", f"{c['denoising_end']:.6g}", _snr(c["log_snr"])]
                    for c in m["hand_overs"]]) if m["hand_overs"] else "One expert: no hand-over.")
    latent = m["latent"]
    load = [f'pipe = MemePipeline.from_pretrained("{out_name}")',
            "images = pipe(batch_size=16, num_inference_steps=50, seed=0).images  # memekit sample --seed 0"]
    if latent is not None:
        ae = latent.get("autoencoder") or {}
        load = [f"# a latent model: decode with its autoencoder ({ae.get('kind')}, {ae.get('path')}, "
                f"fingerprint {ae.get('fingerprint')})",
                "from memekit.analysis.autoencoders import load_autoencoder",
                f'pipe = MemePipeline.from_pretrained("{out_name}", vae=load_autoencoder("{ae.get("path")}"))',
                load[1]]
    precond = pre["mode"] if pre["mode"] == "none" else (
        f"{pre['mode']} (data_std {pre['data_std']:.4g}"
        + "".join(f"; {k} {v}" for k, v in pre["statistics"].items()) + ")")
    reproduce = "\n".join([f"# train\n{m['reproduce']['train']}", f"# sample\n{m['reproduce']['sample']}",
                           f"# package\n{m['reproduce']['package']}"]
                          + [f"# metrics\n{c}" for c in m["reproduce"]["metrics"]])
    return "\n".join([
        "---", to_yaml(meta).replace('license: ""', 'license: ""  # fill in: the licence of these weights'), "---",
        "", f"# {m['spec']}: a {m['experts']}-expert diffusion model (memekit)", "",
        f"{m['experts']} expert U-Nets, each owning an interval of the {m['timesteps']} time-steps "
        f"({m['schedule']} schedule, {m['prediction']} prediction, preconditioning {precond}); "
        f"{m['image_channels']} channel(s) at {m['resolution']} px. EMA weights of step {train['step']:,} "
        f"({train['images_seen']:,} images) of a run on `{train['data']}`, seed {train['seed']}.", "",
        "## Use", "", "```python", "from memekit.search.pipeline import MemePipeline", *load, "```", "",
        "`seed=S` samples what `memekit sample --seed S` samples (batch k of 64 from seed S + k); a `generator` "
        "works as in any diffusers pipeline. Each step's time-step picks the expert that owns it. The networks' "
        "code is memekit's (`pip install \"memekit[diffusers]\"`); with it installed, plain diffusers loads the "
        f'folder too: `DiffusionPipeline.from_pretrained("{out_name}", custom_pipeline="{out_name}", '
        "trust_remote_code=True)` (through its `pipeline.py`).", "",
        "## Experts", "", experts, "", "## Hand-overs", "", cuts, "",
        "## Cost", "",
        f"{cost['params']:,} parameters; {_macs(cost['macs_per_step'])} per step on average, "
        f"{_macs(cost['macs_per_trajectory'])} per {cost['sampling_steps']}-step DDIM trajectory (batch 1; "
        f"{cost['counter']}).", "",
        "## Training", "",
        f"Data `{train['data']}`, budget {train['images']:,} images in batches of {train['batch']} "
        f"(lr {train['lr']}, warm-up {train['warmup_images']:,} images, EMA decay {train['ema_decay']}), seed "
        f"{train['seed']}; packaged at step {train['step']:,} ({train['images_seen']:,} images seen).", "",
        "## Metrics", "", _metrics_section(m["metrics"]), "",
        "## Reproduce", "", "```sh", reproduce, "```", "",
        "## Licence", "", "Fill in `license` in the metadata above before publishing: the licence of these "
        "weights, within the terms of the training data.", ""])
