"""memekit package: a run as a diffusers pipeline folder (model_index.json, scheduler, one safetensors
model per expert, model card), and MemePipeline sampling what memekit's sampler samples.

The tests that need diffusers skip without it; the argument checks and "the core install never
imports diffusers" run either way.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from latent_helpers import encode_and_train, save_tiny_diffusers

from memekit.search.checkpoint import checkpoint_latent, load_checkpoint, save_checkpoint
from memekit.search.package import MAX_EXPERTS, PackageError, package_run
from memekit.search.sampling import load_model, sample_batches, sample_images
from memekit.search.train_config import TrainConfig
from memekit.space import (
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    MultiExpert,
    beta_schedule,
    count_params,
    ddim_timesteps,
    spec_cost,
)
from memekit.space.diffusion import Diffusion
from memekit.space.precondition import ring_count
from memekit.space.presets import backbone_presets
from memekit.space.spec import PREDICTIONS, SCHEDULES, uniform_intervals

# tests/search/conftest.py's helpers are not imported: run beside tests/space, whose conftest is also
# named "conftest", the import would find the wrong one; its fixtures (cli, trained_run) are used
TINY_EXPERT = ExpertSpec(image_channels=3, resolution=8, base_width=8, channel_mult=(1,), blocks_per_stage=(1,),
                         attention_share=(0.5,), head_dim=8, attention_pool=(1,))
TINY_CONFIG = TrainConfig(data="builtin:shapes:160", images=32, batch=8, lr=1e-3, warmup_images=0, device="cpu")


def assert_one_line_error(code: int, stderr: str, contains: str) -> None:
    """Exit 2 and exactly one ``memekit: error:`` line, the last of stderr, with no traceback."""
    errors = [line for line in stderr.splitlines() if re.match(r"memekit( [\w-]+)*: error: ", line)]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0] and contains in errors[0], stderr


def _pipeline(out: Path):
    from memekit.search.pipeline import MemePipeline

    pipe = MemePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_run(run: Path, spec: MemeSpec, step: int = 7) -> dict:
    """A run folder holding one checkpoint of ``spec`` written by memekit's own writer, with EMA weights
    that differ from the raw ones (as after training)."""
    torch.manual_seed(0)
    raw, ema = MultiExpert(spec).state_dict(), MultiExpert(spec).state_dict()
    state = {"spec": spec.to_json(), "config": json.dumps(TINY_CONFIG.to_dict()), "step": step,
             "images_seen": 8 * step, "images_per_expert": [8 * step // spec.n_experts] * spec.n_experts,
             "model": raw, "ema": ema, "ema_updates": step, "optimizer": {}, "scaler": {}}
    save_checkpoint(state, run, keep_last=1)
    return state


def _preconditioned_spec() -> MemeSpec:
    """The paper's 4 experts on a 16 px, base width 8 backbone (T = 1000), with a Wiener skip, v
    prediction and the cosine schedule: every piece of the process must reach the pipeline."""
    backbone = ExpertSpec(resolution=16, base_width=8, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                          attention_share=(0.0, 1.0), head_dim=8, attention_pool=(2, 1))
    rings = np.arange(ring_count(16))
    spectrum = [list(256.0 / (1.0 + rings) ** 2) for _ in range(3)]
    diffusion = DiffusionSpec(schedule="cosine", prediction="v", preconditioning="wiener", data_std=0.45,
                              data_spectrum=spectrum)
    return dataclasses.replace(backbone_presets(backbone)["meme-paper"], diffusion=diffusion)


def _memekit_samples(run: Path, n: int, steps: int, eta: float, seed: int, batch: int) -> torch.Tensor:
    model, spec, _ = load_model(run)
    return torch.cat(list(sample_batches(model, spec, n, steps=steps, eta=eta, seed=seed, batch=batch,
                                         progress=False)))


# ---- the scheduler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("timesteps", [50, 1000])
def test_scheduler_config_is_memekits_schedule(schedule, timesteps) -> None:
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler

    from memekit.search.pipeline import MemeDDIMScheduler, diffusion_spec_of, scheduler_config

    for prediction in PREDICTIONS:
        spec = DiffusionSpec(timesteps=timesteps, schedule=schedule, prediction=prediction)
        config = scheduler_config(spec)
        names = {"linear-ldm": "scaled_linear", "linear-ddpm": "linear", "cosine": "squaredcos_cap_v2"}
        assert config["beta_schedule"] == names[schedule]
        assert config["prediction_type"] == {"eps": "epsilon", "v": "v_prediction"}[prediction]
        diffusers_betas = DDIMScheduler(**config).betas.double().numpy()  # diffusers' own float32 schedule
        assert np.abs(diffusers_betas - beta_schedule(schedule, timesteps)).max() < 1e-7
        assert diffusion_spec_of(config) == spec
        scheduler = MemeDDIMScheduler(**config)
        assert np.array_equal(scheduler.diffusion.alpha_bar, Diffusion(spec).alpha_bar)
        scheduler.set_timesteps(7)
        assert scheduler.timesteps.tolist() == ddim_timesteps(timesteps, 7)


def test_a_foreign_scheduler_config_is_refused() -> None:
    pytest.importorskip("diffusers")
    from memekit.search.pipeline import diffusion_spec_of, scheduler_config
    from memekit.space.errors import SpecError

    config = scheduler_config(DiffusionSpec())
    with pytest.raises(SpecError, match="not memekit's linear-ldm"):
        diffusion_spec_of({**config, "beta_start": 0.00085, "beta_end": 0.012})  # Stable Diffusion's betas
    with pytest.raises(SpecError, match="not one of memekit's schedules"):
        diffusion_spec_of({**config, "prediction_type": "sample"})


# ---- the pipeline samples what memekit samples -------------------------------------------------------
def test_package_then_from_pretrained_samples_memekits_images(trained_run, tmp_path, cli) -> None:
    pytest.importorskip("diffusers")
    out = tmp_path / "pkg"
    code, stdout, err = cli("package", trained_run, out)
    assert code == 0, err
    assert "MemePipeline.from_pretrained" in stdout
    pipe = _pipeline(out)
    for eta in (0.0, 0.5):  # eta > 0 draws the step noise from the same generators, in the same order
        expected = _memekit_samples(trained_run, n=5, steps=7, eta=eta, seed=11, batch=2)
        got = pipe(batch_size=5, num_inference_steps=7, eta=eta, seed=11, sample_batch=2, output_type="latent").images
        assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-4
    one_batch = _memekit_samples(trained_run, n=3, steps=7, eta=0.0, seed=5, batch=64)
    got = pipe(batch_size=3, num_inference_steps=7, generator=torch.Generator().manual_seed(5), output_type="latent")
    assert (got.images - one_batch).abs().max() <= 1e-4  # a generator is one memekit batch
    model, spec, _ = load_model(trained_run)
    images = sample_images(model, spec, 5, steps=7, seed=11, batch=2, progress=False)
    pil = pipe(batch_size=5, num_inference_steps=7, seed=11, sample_batch=2).images
    assert np.array_equal(np.stack([np.asarray(p) for p in pil]), images)
    as_np = pipe(batch_size=3, num_inference_steps=7, seed=5, output_type="np").images
    assert np.abs(as_np - (one_batch / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()).max() <= 1e-4


def test_plain_diffusers_loads_the_folder_through_its_pipeline_py(trained_run, tmp_path) -> None:
    # what a diffusers user types, without naming memekit's class: DiffusionPipeline imports
    # OUT/pipeline.py as a local custom pipeline
    pytest.importorskip("diffusers")
    from diffusers import DiffusionPipeline

    from memekit.search.pipeline import MemePipeline

    out = tmp_path / "pkg"
    package_run(trained_run, out)
    assert "from memekit.search.pipeline import MemePipeline" in (out / "pipeline.py").read_text()
    with pytest.raises(ValueError, match="trust_remote_code"):  # diffusers runs no file without consent
        DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out))
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out), trust_remote_code=True)
    assert type(pipe).__name__ == "MemePipeline"
    pipe.set_progress_bar_config(disable=True)
    reference = MemePipeline.from_pretrained(out)
    reference.set_progress_bar_config(disable=True)
    got = pipe(batch_size=3, num_inference_steps=5, seed=2, output_type="latent").images
    expected = _memekit_samples(trained_run, n=3, steps=5, eta=0.0, seed=2, batch=64)
    assert (got - expected).abs().max() <= 1e-4
    assert torch.equal(got, reference(batch_size=3, num_inference_steps=5, seed=2, output_type="latent").images)


def test_the_package_holds_the_ema_weights_one_expert_per_folder(trained_run, tmp_path) -> None:
    pytest.importorskip("diffusers")
    from memekit.space.diffusers_models import MemeExpertModel

    out = tmp_path / "pkg"
    package_run(trained_run, out)
    state = load_checkpoint(trained_run)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "MemePipeline"
    assert index["expert_0"] == ["memekit.space.diffusers_models", "MemeExpertModel"]
    assert index["expert_2"] == [None, None] and index["latent"] is None
    for n in range(2):
        expert = MemeExpertModel.from_pretrained(out / f"expert_{n}")
        for key, value in expert.state_dict().items():
            assert torch.equal(value, state["ema"][f"experts.{n}.{key}"]), key
        assert not all(torch.equal(v, state["model"][f"experts.{n}.{k}"]) for k, v in expert.state_dict().items())
    assert json.loads((out / "spec.json").read_text()) == json.loads(state["spec"])


def test_four_preconditioned_experts_sample_memekits_images(tmp_path) -> None:
    pytest.importorskip("diffusers")
    spec = _preconditioned_spec()
    _write_run(tmp_path / "run", spec)
    package_run(tmp_path / "run", tmp_path / "pkg", steps=10)
    pipe = _pipeline(tmp_path / "pkg")
    assert pipe.intervals == list(spec.intervals) and pipe.boundary_ratios == [0.25, 0.5, 0.75]
    expected = _memekit_samples(tmp_path / "run", n=3, steps=10, eta=0.3, seed=4, batch=64)
    got = pipe(batch_size=3, num_inference_steps=10, eta=0.3, seed=4, output_type="latent").images
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["taef2", "diffusers-kl"])
def test_a_latent_run_records_its_autoencoder_and_decodes_with_it(kind, tmp_path, taef2_folder) -> None:
    pytest.importorskip("diffusers")
    from memekit.analysis.autoencoders import load_autoencoder
    from memekit.analysis.latents import latent_decoder
    from memekit.space.errors import SpecError

    folder = taef2_folder if kind == "taef2" else save_tiny_diffusers(tmp_path / "kl", "kl")
    _, run = encode_and_train(tmp_path, folder, steps=1)
    package_run(run, tmp_path / "pkg")
    record = checkpoint_latent(load_checkpoint(run))
    assert json.loads((tmp_path / "pkg" / "model_index.json").read_text())["latent"] == record
    if kind == "taef2":
        vae = load_autoencoder(folder)
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(folder)
    from memekit.search.pipeline import MemePipeline

    pipe = MemePipeline.from_pretrained(tmp_path / "pkg", vae=vae)
    pipe.set_progress_bar_config(disable=True)
    model, spec, _ = load_model(run)
    expected = sample_images(model, spec, 3, steps=4, seed=2, progress=False, decoder=latent_decoder(record))
    got = np.stack([np.asarray(p) for p in pipe(batch_size=3, num_inference_steps=4, seed=2).images])
    assert got.shape == expected.shape and np.array_equal(got, expected)
    without = _pipeline(tmp_path / "pkg")
    with pytest.raises(SpecError, match="pass vae="):
        without(batch_size=1, num_inference_steps=2, seed=0)


# ---- the model card ----------------------------------------------------------------------------------
def _fid_json(path: Path, step: int) -> Path:
    """A file shaped as `memekit fid RUN REF --seeds 2 --json` writes it (SampleMetrics.to_dict)."""
    per_seed = [{"seed": s, "sampling_seed": s * 1_000_003, "fid": f, "kid_mean": k, "kid_std": 0.001, "lsd": None,
                 "lsd_low": None, "lsd_mid": None, "lsd_high": None}
                for s, f, k in ((0, 101.5, 0.081), (1, 98.5, 0.079))]
    data = {"a": "RUN", "b": "data:faces", "fid_mean": 100.0, "fid_std": 2.1213, "kid_mean": 0.08, "kid_std": 0.0014,
            "lsd_mean": None, "lsd_std": None, "per_seed": per_seed, "n": 500, "n_ref": 1000, "protocol": "clean",
            "weights_label": "pytorch-fid pt_inception-2015-12-05", "steps": 25, "reference": "data:faces",
            "checkpoint": "RUN/checkpoints/x.pt", "checkpoint_step": step, "resolution": 8, "kid_subsets": 100,
            "kid_subset_size": 500, "notes": []}
    path.write_text(json.dumps(data))
    return path


def test_the_model_card_states_intervals_cost_training_and_metrics(trained_run, tmp_path, cli) -> None:
    pytest.importorskip("diffusers")
    yaml = pytest.importorskip("yaml")
    state = load_checkpoint(trained_run)
    metrics = _fid_json(tmp_path / "fid.json", int(state["step"]))
    code, _, err = cli("package", trained_run, tmp_path / "pkg", "--metrics", metrics)
    assert code == 0, err
    text = (tmp_path / "pkg" / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("\n---\n")[0].removeprefix("---\n"))
    assert meta == json.loads((tmp_path / "pkg" / "memekit.json").read_text())
    assert meta["license"] == "" and meta["library_name"] == "diffusers"
    m = meta["memekit"]
    spec = MemeSpec.from_json(state["spec"])  # the tiny spec: T = 50, cut at 20, linear-ddpm
    betas = np.linspace(0.1e-3 * 20, 0.02 * 20, 50)  # DDPM's 1e-4 .. 0.02, scaled by 1000 / T
    alpha_bar = np.cumprod(1 - betas)
    snr = np.log(alpha_bar / (1 - alpha_bar))
    assert [e["timesteps"] for e in m["intervals"]] == [[0, 20], [20, 50]]
    assert m["intervals"][1]["log_snr"] == pytest.approx([snr[20], snr[49]], abs=1e-4)
    cut = m["hand_overs"][0]
    assert cut["t"] == 20 and cut["boundary_ratio"] == 0.4 and cut["denoising_end"] == pytest.approx(0.6)
    assert cut["log_snr"] == pytest.approx(snr[20], abs=1e-4)
    assert m["intervals"][0]["attention_share"] == [0.5] and m["intervals"][0]["attention_share_built"] == [1.0]
    assert m["preconditioning"]["mode"] == "none"
    assert m["cost"]["params"] == count_params(MultiExpert(spec))
    assert m["cost"]["macs_per_trajectory"] == spec_cost(spec, 50).trajectory_macs
    config = json.loads((trained_run / "config.json").read_text())
    assert {k: m["training"][k] for k in ("data", "images", "batch", "seed")} == {
        k: config[k] for k in ("data", "images", "batch", "seed")}
    fid, kid = m["metrics"][:2]
    assert (fid["name"], fid["value"], fid["std_over_seeds"], fid["per_seed"]) == ("FID", 100.0, 2.1213, [101.5, 98.5])
    assert (fid["protocol"], fid["weights"], fid["n"], fid["seeds"]) == (
        "clean", "pytorch-fid pt_inception-2015-12-05", 500, [0, 1])
    assert fid["sampling_seeds"] == [0, 1_000_003] and kid["name"] == "KID" and kid["value"] == 0.08
    assert any("--seeds 2" in c and "--protocol clean" in c for c in m["reproduce"]["metrics"])
    assert m["reproduce"]["train"].startswith("memekit train spec.json --data builtin:shapes:160")
    assert "| 20 | 0.4 | 0.6 |" in text and "| FID | 100 |" in text


def test_metrics_of_another_checkpoint_are_refused(trained_run, tmp_path, cli) -> None:
    step = int(load_checkpoint(trained_run)["step"])
    metrics = _fid_json(tmp_path / "fid.json", step - 1)
    code, _, err = cli("package", trained_run, tmp_path / "pkg", "--metrics", metrics)
    if code != 0 and "pip install" in err:
        pytest.skip("diffusers is not installed")
    assert_one_line_error(code, err, contains=f"scores checkpoint step {step - 1}")
    assert not (tmp_path / "pkg").exists()


# ---- arguments, atomic writes, optional diffusers ------------------------------------------------------
def test_package_checks_its_arguments_in_one_line(trained_run, tmp_path, cli, monkeypatch) -> None:
    (tmp_path / "not-a-run").mkdir()
    code, _, err = cli("package", tmp_path / "not-a-run", tmp_path / "out")
    assert_one_line_error(code, err, contains="is not a run folder of memekit train")
    code, _, err = cli("package", tmp_path / "missing", tmp_path / "out")
    assert_one_line_error(code, err, contains="does not exist")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    code, _, err = cli("package", trained_run, tmp_path / "full")
    assert_one_line_error(code, err, contains="is not empty: pass --overwrite")
    (tmp_path / "a-file").write_text("x")
    code, _, err = cli("package", trained_run, tmp_path / "a-file")
    assert_one_line_error(code, err, contains="is a file")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    code, _, err = cli("package", trained_run, tmp_path / "out")
    assert_one_line_error(code, err, contains="pip install memekit[diffusers]")
    assert not (tmp_path / "out").exists() and (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_package_refuses_more_experts_than_the_pipeline_holds(tmp_path) -> None:
    pytest.importorskip("diffusers")
    from memekit.search import pipeline

    slots = [p for p in inspect.signature(pipeline.MemePipeline.__init__).parameters if p.startswith("expert_")]
    assert len(slots) == MAX_EXPERTS == pipeline.MAX_EXPERTS
    n = MAX_EXPERTS + 1
    spec = MemeSpec(experts=(TINY_EXPERT,) * n, intervals=uniform_intervals(50, n), soft_assignment=(1.0,) * n,
                    diffusion=DiffusionSpec(timesteps=50, schedule="linear-ddpm"))
    _write_run(tmp_path / "run", spec)
    with pytest.raises(PackageError, match=f"{n} experts; a MemePipeline holds at most {MAX_EXPERTS}"):
        package_run(tmp_path / "run", tmp_path / "pkg")


def test_the_folder_is_written_whole_or_not_at_all(trained_run, tmp_path, monkeypatch, cli) -> None:
    pytest.importorskip("diffusers")
    import memekit.search.package as package

    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("the previous package")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(package, "atomic_write_json", fail)  # fails after the weights are written
        with pytest.raises(OSError, match="disk full"):
            package_run(trained_run, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no temporary folder left
    code, _, err = cli("package", trained_run, out, "--overwrite")
    assert code == 0, err
    assert not (out / "old.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert oct((out / "expert_0" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777) == oct(
        (out / "spec.json").stat().st_mode & 0o777)  # readable as memekit's own files, not owner-only


def test_dry_run_checks_and_writes_nothing(trained_run, tmp_path, cli) -> None:
    pytest.importorskip("diffusers")
    code, stdout, err = cli("package", trained_run, tmp_path / "pkg", "--dry-run", "--steps", "10")
    assert code == 0, err
    plan = json.loads(stdout)
    assert plan["step"] == int(load_checkpoint(trained_run)["step"]) and plan["components"] == [
        "scheduler", "expert_0", "expert_1"]
    assert plan["metadata"]["cost"]["sampling_steps"] == 10 and not (tmp_path / "pkg").exists()


def test_the_core_install_never_imports_diffusers() -> None:
    code = ("import sys, memekit.space, memekit.search.package, memekit.search.cli, memekit.search.model_card; "
            "print('diffusers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_log_snr_of_the_card_is_the_closed_form() -> None:
    from memekit.search.model_card import log_snr

    for alpha_bar in (0.999, 0.5, 1e-6):
        assert log_snr(alpha_bar) == pytest.approx(math.log(alpha_bar / (1 - alpha_bar)), rel=1e-12)
    assert log_snr(0.5) == 0.0
