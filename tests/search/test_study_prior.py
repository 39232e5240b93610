"""``memekit search --prior``: the spectrum step's prior seeds the study, re-cut to the space's
backbone; the study records and says which prior it seeded and from what, never changes it on
resume, and refuses a different one. Without ``--prior`` the prior is recomputed and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import assert_one_line_error

from memekit.analysis.priors import min_length_for_steps
from memekit.analysis.reports import SpectrumJob, run_spectrum
from memekit.search.searchspace import load_search_space
from memekit.search.study import SearchConfig, SearchError, prepare_study
from memekit.search.warmstart import PriorFileError, study_min_length
from memekit.space import load_spec

DATA = "builtin:shapes:128"


def tiny_search(study_dir: Path, **fields: Any) -> SearchConfig:
    base: dict[str, Any] = dict(study_dir=str(study_dir), space="tiny", data=DATA, proxy_images=32, proxy_batch=16,
                                val_images=16, n_trials=3, warm_start=("prior",), device="cpu",
                                preconditioning="none")
    base.update(fields)
    return SearchConfig(**base)


@pytest.fixture(scope="module")
def spectrum(tmp_path_factory: pytest.TempPathFactory, memekit_cache: Path) -> Path:
    """``memekit spectrum builtin:shapes:64 --resolution 16 --n-experts 2``: meme-paper's 4-stage
    backbone, not the tiny space's 2 stages."""
    out = tmp_path_factory.mktemp("spectrum") / "utk"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMEKIT_CACHE", str(memekit_cache))
        run_spectrum(SpectrumJob("builtin:shapes:64", str(out), resolution=16, n_experts=2), progress=False)
    return out


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_prior_file_seeds_the_study_recut_and_recorded(tmp_path: Path, spectrum: Path) -> None:
    said: list[str] = []
    study = prepare_study(tiny_search(tmp_path / "s", prior=str(spectrum / "prior_spec.json")), say=said.append)
    given = load_spec(spectrum / "prior_spec.json")
    seeded = load_spec(tmp_path / "s" / "prior_spec.json")
    assert given.experts[0].n_stages == 4 and seeded.experts[0].n_stages == 2  # re-cut to the space's backbone
    assert seeded.intervals == given.intervals and seeded.soft_assignment == given.soft_assignment
    def backbone(expert) -> dict:
        return {k: v for k, v in expert.to_dict().items() if k != "attention_share"}

    assert all(backbone(e) == backbone(load_search_space("tiny").base_expert) for e in seeded.experts)
    source = json.loads((tmp_path / "s" / "prior_source.json").read_text())
    assert study.user_attrs["memekit_prior"] == source
    config = json.loads((spectrum / "config.json").read_text())
    assert source["source"] == "file" and source["file"] == str((spectrum / "prior_spec.json").resolve())
    assert (source["data"], source["resolution"], source["min_length"]) == ("builtin:shapes:64", 16,
                                                                            config["min_length"])
    assert source["recut"] and "spectrum.npz" in source["recut"]
    assert said[0].startswith(f"prior: seeded from {spectrum / 'prior_spec.json'} (memekit spectrum of 64 images "
                              "of builtin:shapes:64 at 16 px, minimum interval length")
    assert json.loads((tmp_path / "s" / "search_config.json").read_text())["prior"] == str(spectrum / "prior_spec.json")
    (trial,) = study.get_trials(deepcopy=False)  # the enqueued prior warm start
    assert trial.user_attrs["warm_start"] == "prior"


def test_resume_keeps_the_prior_and_refuses_a_different_one(tmp_path: Path, spectrum: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_study(tiny_search(tmp_path / "s", prior=str(spectrum / "prior_spec.json")))
    other = tmp_path / "other"
    shutil.copytree(spectrum, other)
    with pytest.raises(SearchError, match="different prior") as info:
        prepare_study(tiny_search(tmp_path / "s", prior=str(other / "prior_spec.json")))
    assert "\n" not in str(info.value)
    with pytest.raises(SearchError, match="different prior"):  # recomputing is a different prior too
        prepare_study(tiny_search(tmp_path / "s"))
    monkeypatch.chdir(spectrum.parent)  # the same file given another way is the same prior
    prepare_study(tiny_search(tmp_path / "s", prior=f"{spectrum.name}/prior_spec.json"))


def test_a_changed_prior_file_never_changes_a_resumed_study(tmp_path: Path, spectrum: Path) -> None:
    folder = tmp_path / "spectrum"
    shutil.copytree(spectrum, folder)
    config = tiny_search(tmp_path / "s", prior=str(folder / "prior_spec.json"))
    prepare_study(config)
    before = (tmp_path / "s" / "prior_spec.json").read_text()
    spec = json.loads((folder / "prior_spec.json").read_text())
    spec["intervals"] = [[0, 500], [500, 1000]]
    (folder / "prior_spec.json").write_text(json.dumps(spec))
    said: list[str] = []
    prepare_study(config, say=said.append)
    assert (tmp_path / "s" / "prior_spec.json").read_text() == before
    assert any("changed since the study was seeded from it: the study keeps its prior" in line for line in said)


def test_without_prior_the_study_recomputes_it_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    prepare_study(tiny_search(tmp_path / "s"), say=said.append)
    source = json.loads((tmp_path / "s" / "prior_source.json").read_text())
    space = load_search_space("tiny")
    # the derived minimum (3 of 50 DDIM steps: 62) is below the tiny space's min_length 100, which binds
    assert min_length_for_steps(1000, 50, 3) == 62 < space.min_length
    assert source["source"] == "recomputed" and source["min_length"] == space.min_length == 100
    assert study_min_length(tiny_search(tmp_path / "x"), space)[0] == 100
    assert study_min_length(tiny_search(tmp_path / "x", sampling_steps=10), space)[0] == 333  # 3 x 111 apart
    assert said[0].startswith(f"prior: recomputed from {source['images']} images of the train split of {DATA}")
    assert "memekit search --prior DIR/prior_spec.json seeds the prior of memekit spectrum instead" in said[0]


def test_prior_without_a_prior_warm_start_or_centre_is_refused(tmp_path: Path, spectrum: Path) -> None:
    with pytest.raises(SearchError, match="add prior to --warm-start"):
        prepare_study(tiny_search(tmp_path / "s", warm_start=("meme-paper",), prior=str(spectrum / "prior_spec.json")))
    assert not (tmp_path / "s").exists()


def test_prior_files_that_cannot_seed_the_space_are_one_line_errors(tmp_path: Path, spectrum: Path, cli) -> None:
    four = tmp_path / "four"
    run_spectrum(SpectrumJob("builtin:shapes:24", str(four), resolution=16, n_experts=4), progress=False)
    with pytest.raises(PriorFileError, match=r"has 4 experts, the space 'tiny' \[2\]: run memekit spectrum with "
                                             r"--n-experts 2"):
        prepare_study(tiny_search(tmp_path / "a", prior=str(four / "prior_spec.json")))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(spectrum / "prior_spec.json", lonely / "prior_spec.json")  # no spectrum.npz to re-cut it
    with pytest.raises(PriorFileError, match="no spectrum.npz beside it"):
        prepare_study(tiny_search(tmp_path / "b", prior=str(lonely / "prior_spec.json")))
    code, _, err = cli("search", tmp_path / "c", "--space", "tiny", "--data", DATA, "--prior", tmp_path / "nope.json",
                       "--trials", "1", "--device", "cpu")
    assert_one_line_error(code, err, contains="does not exist: give the prior_spec.json")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_search_warns_of_the_start_up_phase_when_it_starts(tmp_path: Path, cli) -> None:
    code, out, err = cli("search", tmp_path / "s", "--space", "tiny", "--data", DATA, "--warm-start", "meme-paper",
                         "--trials", "2", "--proxy-images", "16", "--proxy-batch", "16", "--val-images", "16",
                         "--preconditioning", "none", "--device", "cpu", "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == ("memekit: warning: start-up phase: tpe draws its first 10 trials (warm starts included) at "
                        "random, so this study of 2 trials is 1 warm start(s) and 1 random draws that do not depend "
                        "on the data; give --trials above 10 (--update) for trials the sampler proposes")
