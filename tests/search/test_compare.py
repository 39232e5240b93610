"""memekit compare and ablate: work bookkeeping, claims, hybrid specs and factorial effects.

Sample scoring is replaced by a stand-in (a run's score is a closed-form function of its row and
seed), so these tests check the comparison's own logic; FID / KID themselves are tested in
tests/analysis.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from conftest import DATA, assert_one_line_error, tiny_config, tiny_spec

from memekit.search import ablate as ab
from memekit.search import compare as cmp

PROTOCOL = cmp.Protocol(DATA, images=16, batch=8, lr=1e-3, warmup_images=0, n=4, steps=2, preconditioning=None)
# a stand-in score: row "b" is 0.01 above row "a", training seed s adds 0.01 s (shared by both rows)
BASE = {"a": 0.05, "b": 0.06}


@pytest.fixture
def fake_scores(monkeypatch):
    calls = []

    def score(folder, protocol, sampling_seed, device, weights):
        row, seed = folder.parent.name, int(folder.name.split("-")[1])
        calls.append((row, seed, sampling_seed))
        kid = BASE[row] + 0.01 * seed + 0.0001 * sampling_seed + (0.0004 if (row, seed) == ("b", 1) else 0.0)
        return {"fid": 1000 * kid, "kid_mean": kid, "kid_std": 0.0, "lsd": 1.0, "n": 4, "n_ref": 17,
                "weights": "stand-in", "protocol": "pytorch-fid"}

    monkeypatch.setattr(cmp, "score_run", score)
    monkeypatch.setattr(cmp, "draw_grid", lambda folder, path, steps, device, real=None: path.name)
    return calls


def rows():
    return {"a": tiny_spec(soft_assignment=(0.8, 0.3)), "b": tiny_spec(soft_assignment=(0.5, 0.5))}


def test_compare_trains_what_is_missing_and_resumes(tmp_path, fake_scores):
    path = tmp_path / "res.json"
    c = cmp.open_comparison(path, PROTOCOL, rows(), tmp_path / "work", say=lambda _: None)
    assert cmp.run_comparison(c, train_seeds=2, sampling_seeds=2, say=lambda _: None, progress=False)
    assert len(fake_scores) == 8  # 2 rows x 2 training seeds x 2 sampling seeds
    stored = json.loads(path.read_text())
    assert stored["protocol"] == PROTOCOL.to_dict()
    assert stored["models"]["a"]["runs"]["1"]["trained"]["images"] == 16
    # a second process with one more training seed scores only the new runs
    c2 = cmp.open_comparison(path, PROTOCOL, rows(), tmp_path / "work", say=lambda _: None)
    assert cmp.run_comparison(c2, train_seeds=3, sampling_seeds=2, say=lambda _: None, progress=False)
    assert sorted(set(fake_scores[8:])) == [("a", 2, 0), ("a", 2, 1), ("b", 2, 0), ("b", 2, 1)]


def test_claims_blocked_by_seed_see_through_the_shared_seed_effect(tmp_path, fake_scores):
    path = tmp_path / "res.json"
    c = cmp.open_comparison(path, PROTOCOL, rows(), tmp_path / "work", say=lambda _: None)
    cmp.run_comparison(c, train_seeds=3, sampling_seeds=1, say=lambda _: None, progress=False)
    results = cmp.load_results(path)
    claims = [cmp.Claim("better", "a", "b"), cmp.Claim("noninferior", "b", "a", 0.005)]
    blocked, fit = cmp.decide(results, claims)
    unblocked, _ = cmp.decide(results, claims, blocked=False)
    # a - b: -0.01 on seeds 0 and 2, -0.0104 on seed 1: mean -0.010133
    assert blocked[0].difference.diff == pytest.approx(-0.0304 / 3)
    # the seed effect (0.01 per seed) is common to both rows: blocking removes it from the noise
    assert fit.residual.sd < 0.0005 < cmp.decide(results, claims, blocked=False)[1].residual.sd
    assert blocked[0].met and not unblocked[0].met
    # b - a = +0.0101 against a margin of 0.005: not shown non-inferior (it is worse)
    assert blocked[1].met is False
    assert blocked[0].p_holm == pytest.approx(min(1.0, 2 * min(blocked[0].p, blocked[1].p)))
    assert blocked[0].text.endswith("-> A better")
    # the claim turned round (b better than a) is rejected in the other direction: said so, not "not shown"
    opposite, _ = cmp.decide(results, [cmp.Claim("better", "b", "a")])
    assert opposite[0].met is False and opposite[0].text.endswith("-> B better (the claim's opposite)")


def test_a_run_claimed_by_a_live_process_is_left_alone(tmp_path, fake_scores):
    c = cmp.open_comparison(tmp_path / "res.json", PROTOCOL, {"a": rows()["a"]}, tmp_path / "work",
                            say=lambda _: None)
    claim = cmp.run_dir(c, "a", 0).with_name("seed-0.claim")
    claim.parent.mkdir(parents=True)
    claim.write_text(str(os.getpid()))  # this process is alive
    assert not cmp.run_comparison(c, train_seeds=1, say=lambda _: None, progress=False)
    assert fake_scores == [] and not cmp.run_dir(c, "a", 0).exists()
    claim.write_text("999999999")  # no such process: taken over
    assert cmp.run_comparison(c, train_seeds=1, say=lambda _: None, progress=False)
    assert not claim.exists()


def test_another_protocol_a_renamed_spec_and_a_changed_margin_are_refused(tmp_path, fake_scores):
    path = tmp_path / "res.json"
    c = cmp.open_comparison(path, PROTOCOL, rows(), tmp_path / "work", say=lambda _: None)
    cmp.declare_claims(c.results, [cmp.Claim("noninferior", "a", "b", 0.005)], "2026-01-01")
    c.save()
    with pytest.raises(cmp.CompareError, match="images 16"):
        cmp.open_comparison(path, dataclasses.replace(PROTOCOL, images=32), rows(), tmp_path / "work")
    other = {"a": rows()["b"]}
    c.results["models"]["a"] = {"spec": rows()["a"].to_dict(), "runs": {}}
    c.save()
    with pytest.raises(cmp.CompareError, match="another spec"):
        cmp.open_comparison(path, PROTOCOL, other, tmp_path / "work")
    with pytest.raises(cmp.CompareError, match="declared on 2026-01-01"):
        cmp.declare_claims(cmp.load_results(path), [cmp.Claim("noninferior", "a", "b", 0.01)], "2026-01-02")


def test_two_processes_saving_keep_each_others_entries(tmp_path):
    path = tmp_path / "res.json"
    first, second = cmp.load_results(path), cmp.load_results(path)
    base1, base2 = json.loads(json.dumps(first)), json.loads(json.dumps(second))
    first["models"]["a"] = {"spec": {}, "runs": {"0": {"samples": {"0": {"kid_mean": 1}}}}}
    second["models"]["b"] = {"spec": {}, "runs": {"0": {"samples": {"0": {"kid_mean": 2}}}}}
    cmp.merge_save(path, first, base1)
    cmp.merge_save(path, second, base2)
    second["models"]["b"]["runs"]["1"] = {"samples": {}}
    cmp.merge_save(path, second, base2)
    assert set(cmp.load_results(path)["models"]) == {"a", "b"}
    assert set(cmp.load_results(path)["models"]["b"]["runs"]) == {"0", "1"}


# ---- ablate ------------------------------------------------------------------------------------------
def two_specs():
    winner = tiny_spec(boundaries=(0, 10, 50), soft_assignment=(0.9, 0.2))
    winner = dataclasses.replace(winner, name="winner", experts=(
        dataclasses.replace(winner.experts[0], attention_share=(1.0,)), winner.experts[1]))
    baseline = dataclasses.replace(tiny_spec(boundaries=(0, 25, 50), soft_assignment=(0.8, 0.4)), name="baseline")
    return winner, baseline


def test_hybrid_cells_swap_exactly_one_group_each():
    winner, baseline = two_specs()
    assert ab.differing_groups(winner, baseline) == ("shares", "intervals", "p_n")
    groups = ab.parse_groups(["shares", "intervals+p_n"])
    cells = ab.hybrid_cells(winner, baseline, groups)
    assert cells[(0, 0)] == baseline and cells[(1, 1)] == winner
    shares = cells[(1, 0)]
    assert [e.attention_share for e in shares.experts] == [e.attention_share for e in winner.experts]
    assert (shares.intervals, shares.soft_assignment) == (baseline.intervals, baseline.soft_assignment)
    alloc = cells[(0, 1)]
    assert [e.attention_share for e in alloc.experts] == [e.attention_share for e in baseline.experts]
    assert (alloc.intervals, alloc.soft_assignment) == (winner.intervals, winner.soft_assignment)
    assert ab.cell_name((0, 1), groups, "w", "b") == "hybrid-intervals+p_n"


def test_ablate_refuses_what_no_group_swaps():
    winner, baseline = two_specs()
    wider = dataclasses.replace(winner, experts=tuple(dataclasses.replace(e, base_width=16) for e in winner.experts))
    with pytest.raises(ab.AblationError, match="base_width"):
        ab.hybrid_cells(wider, baseline, [("shares",)])
    with pytest.raises(ab.AblationError, match="do not differ in preconditioning"):
        ab.hybrid_cells(winner, baseline, [("preconditioning",)])
    with pytest.raises(ab.AblationError, match="unknown group"):
        ab.parse_groups(["attention"])


def test_effects_of_an_additive_factorial_are_its_parts():
    # cell means: baseline 0.06; shares -0.002, allocation -0.008, interaction +0.001; seeds add 0.01 s
    groups = (("shares",), ("intervals", "p_n"))
    cells = {(0, 0): "base", (1, 0): "sh", (0, 1): "al", (1, 1): "win"}
    mean = {"base": 0.06, "sh": 0.058, "al": 0.052, "win": 0.051}
    noise = {0: 0.0001, 1: -0.0002, 2: 0.0001}
    values = {r: {str(s): m + 0.01 * s + noise[s] * (1 if r == "win" else 0) for s in range(3)}
              for r, m in mean.items()}
    found, total, fit = ab.effects(values, cells, groups)
    by = {e.label: e for e in found}
    assert total.diff == pytest.approx(-0.009)
    assert by["shares"].difference.diff == pytest.approx(((0.058 - 0.06) + (0.051 - 0.052)) / 2)
    assert by["intervals+p_n"].difference.diff == pytest.approx(((0.052 - 0.06) + (0.051 - 0.058)) / 2)
    assert by["shares x intervals+p_n (interaction)"].difference.diff == pytest.approx(0.001)
    assert by["shares"].share + by["intervals+p_n"].share == pytest.approx(1.0)
    assert fit.residual.dof == 6  # 12 runs - 4 rows - 2 seed effects


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, cli, spec_file):

    a, b = spec_file(), spec_file(soft_assignment=(0.5, 0.5))
    res = tmp_path / "res.json"
    code, _, err = cli("compare", f"a={a}", f"b={b}", "--data", DATA, "--results", res, "--better", "a:c")
    assert_one_line_error(code, err, contains="--better 'a:c'")
    code, _, err = cli("compare", f"a={a}", f"b={b}", "--data", DATA, "--results", res, "--noninferior", "a:b")
    assert_one_line_error(code, err, contains="margin")
    code, _, err = cli("ablate", f"w={a}", "b=single-small", "--data", DATA, "--resolution", "8", "--results", res)
    assert_one_line_error(code, err, contains="experts")
    assert not res.exists() and not (tmp_path / "res-runs").exists()
    code, out, _ = cli("ablate", f"w={a}", f"b={b}", "--data", DATA, "--results", res, "--dry-run",
                       "--preconditioning", "keep")
    assert code == 0 and set(json.loads(out)["rows"]) == {"w", "b"}  # only p_n differs: no hybrid
    assert not res.exists()


def test_runs_of_one_seed_share_data_order_and_noise_across_cells(tmp_path, monkeypatch):
    """What pairing relies on: two cells of an ablation (other intervals, other p_n, other attention
    shares) trained with one seed see the same images, flips and noise at every step, and their
    time-steps come from the same uniforms (equal wherever the two samplers agree)."""

    from memekit.search.train import Trainer
    from memekit.space import Diffusion

    seen: dict[str, list] = {}
    original = Diffusion.loss

    def record(self, model, x0, t, noise, weighted=False):
        seen.setdefault(self._label, []).append((x0.clone(), t.clone(), noise.clone()))
        return original(self, model, x0, t, noise, weighted=weighted)

    monkeypatch.setattr(Diffusion, "loss", record)
    winner, baseline = two_specs()
    for label, spec in (("winner", winner), ("baseline", baseline)):
        trainer = Trainer(spec, tiny_config(images=24, batch=8), tmp_path / label, progress=False)
        trainer.diffusion._label = label
        trainer.load_data()
        for _ in range(3):
            trainer.train_step()
            trainer.step += 1
    assert len(seen["winner"]) == len(seen["baseline"]) == 6  # 3 steps x 2 experts
    same_t = 0
    for (x_w, t_w, n_w), (x_b, t_b, n_b) in zip(seen["winner"], seen["baseline"], strict=True):
        assert torch.equal(x_w, x_b) and torch.equal(n_w, n_b)
        same_t += int((t_w == t_b).sum())
    assert 0 < same_t < 6 * 4  # the intervals differ, so some time-steps do too


def test_speed_rounds_load_each_rows_data_once_and_keep_every_round(monkeypatch):
    """Each row's trainer loads its data in the first round only; every round's rate is kept."""
    from memekit.search import train as train_module

    loads = []
    real = train_module.Trainer.load_data

    def counting(self):
        loads.append(self.spec.name)
        real(self)

    monkeypatch.setattr(train_module.Trainer, "load_data", counting)
    specs = {"a": dataclasses.replace(tiny_spec(), name="a"), "b": dataclasses.replace(tiny_spec(), name="b")}
    timing = cmp.speed_rounds(specs, PROTOCOL, rounds=3, n=2, train_steps=2, device="cpu", say=lambda line: None)
    assert sorted(loads) == ["a", "b"]
    for row in timing.values():
        assert len(row["sampling_rounds"]) == len(row["train_rounds"]) == 3
        assert all(rate > 0 for rate in row["sampling_rounds"] + row["train_rounds"])


def test_the_real_grid_spreads_its_picks_through_the_reference_split(tmp_path):
    """Folders come sorted by class or name, so the grid the samples are read against takes images evenly
    spaced through the reference split, not its first n (34 reference images: 0, 11, 22, 33 for n = 4)."""
    import numpy as np
    from PIL import Image

    from memekit.analysis.data import load_images
    from memekit.search.sampling import image_grid

    reference = load_images("builtin:shapes:400", 32, split="reference", progress=False)
    assert len(reference) == 34
    cmp.draw_real_grid("builtin:shapes:400", 32, tmp_path / "real.png", n=4)
    expected = image_grid(reference[[0, 11, 22, 33]], nrow=8, scale=3)  # 32 px upscaled 3 x, as samples are
    assert np.array_equal(np.asarray(Image.open(tmp_path / "real.png").convert("RGB")), expected)
