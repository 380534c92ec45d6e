"""Recipes: each method's schedule, weight and Dice as its authors' code runs it, resolved into the config by
--schedule recipe|shared; LR policies and ramp counters; the docs' recipe table is generated from the recipes."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from methods import METHODS, Batch, MethodSettings, StepContext, build_method
from methods.recipe import recipe_markdown
from networks import build_network
from training.config import legacy_settings, resumed_config
from training.flags import build_train_parser, config_from_args
from training.presets import ACDC, LA, PRESETS
from utils.losses import masked_mse
from utils.ramps import learning_rate

BASELINES_DOC = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"
BASELINES = ["bcp", "dtc", "mc_net", "mean_teacher", "sassnet", "ua_mt", "urpc"]


def config(preset, *flags):
    return config_from_args(build_train_parser(preset.dataset, "").parse_args(list(flags)), preset.dataset)


# -- every baseline has a cited recipe; the docs' table is the recipes' own ------------------------------------
# "owner/repo @ commit `script.py`" (a pull request may stand between the repository and the commit)
CITED_SCRIPT = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?: pull request #\d+)? @ (?P<commit>[0-9a-f]{7,40}) "
                          r"`(?P<script>[\w./-]+\.py)`")
LINE_RANGE = re.compile(r":(\d+)(?:-(\d+))?")
REPOSITORY = re.compile(r"\b[\w.-]+/[\w.-]+\b")
OFFICIAL_SSNET = "ycwu1997/SS-Net @ c0a8bf6"  # the commit docs/faithfulness.md and the README compare against


def all_recipes():
    return {(m, dims): METHODS[m].recipe(dims) for m in BASELINES + ["ss_net"] for dims in (3, 2)}


@pytest.mark.parametrize("method", BASELINES + ["ss_net"])
@pytest.mark.parametrize("dims", [3, 2])
def test_every_method_has_a_recipe_with_its_source_or_the_reason_there_is_none(method, dims):
    recipe = METHODS[method].recipe(dims)
    assert recipe is not None
    if recipe.lines:  # the authors' code: a script at a commit, and the line of that script for each value
        cited = CITED_SCRIPT.search(recipe.source)
        assert cited, f"{method} {dims}-D: source {recipe.source!r} names no `owner/repo @ commit `script.py``"
        assert recipe.lines.startswith(":"), "the first value should stand in the cited script"
        ranges = [(int(a), int(b or a)) for a, b in LINE_RANGE.findall(recipe.lines)]
        assert len(ranges) >= 2 and all(1 <= a <= b for a, b in ranges), recipe.lines
    else:  # no authors' code: which repository was looked at, and what stands in for it
        assert REPOSITORY.search(recipe.source) and recipe.note
    if recipe.schedule is None or recipe.dice is None:
        assert recipe.note  # falls back to SS-Net's setting: says so
    if method == "ss_net":
        assert recipe.source.startswith(OFFICIAL_SSNET) and recipe.schedule and recipe.dice


def test_each_repository_is_cited_at_one_commit():
    """Two recipes from one repository read the same commit (a pull request is its own source)."""
    commits: dict[str, set[str]] = {}
    for recipe in all_recipes().values():
        cited = CITED_SCRIPT.search(recipe.source)
        if cited and "pull request" not in recipe.source:
            commits.setdefault(cited["repo"], set()).add(cited["commit"])
    assert {"ycwu1997/SS-Net", "HiLab-git/SSL4MIS", "yulequan/UA-MT"} <= set(commits)
    assert {repo: sorted(c) for repo, c in commits.items() if len(c) > 1} == {}


def test_the_recipe_table_of_the_docs_is_generated_from_the_recipes():
    shared = {3: (LA.schedule, LA.dice, LA.values["consistency"]),
              2: (ACDC.schedule, ACDC.dice, ACDC.values["consistency"])}
    expected = recipe_markdown(METHODS, shared)
    text = BASELINES_DOC.read_text()
    found = re.search(r"<!-- recipe table: begin -->\n(.*?)\n<!-- recipe table: end -->", text, re.S)
    assert found, "docs/baselines.md lacks the recipe table markers"
    assert found.group(1) == expected, "docs/baselines.md recipe table is stale; paste:\n" + expected


# -- --schedule recipe | shared ----------------------------------------------------------------------------------
def test_ua_mt_la_runs_its_recipe_by_default():
    c = config(LA, "--method", "ua_mt")
    assert (c.schedule, c.max_iteration, c.lr_policy, c.lr_step, c.consistency_rampup) == ("recipe", 6000, "step",
                                                                                          2500, 40.0)
    assert c.rampup_zero_based and c.consistency == 0.1 and c.consistency_off == 0
    assert (c.dice_include_background, c.dice_squared_denominator, c.dice_smooth) == (False, True, 1e-5)
    assert c.max_iteration == 6000  # the config is the method's settings: UA-MT's threshold ramps over 6,000


def test_acdc_mean_teacher_recipe_is_poly_lr_with_a_1000_iteration_gate():
    c = config(ACDC, "--method", "mean_teacher")
    assert (c.max_iteration, c.lr_policy, c.consistency_rampup, c.consistency_off) == (30000, "poly", 200.0, 1000)
    assert c.rampup_zero_based and (c.dice_include_background, c.dice_squared_denominator, c.dice_smooth) == (
        True, True, 1e-5)
    assert config(ACDC, "--method", "ua_mt").consistency_off == 0


def test_mc_net_la_recipe_keeps_the_lr_constant_for_15000_iterations():
    c = config(LA, "--method", "mc_net")
    assert (c.max_iteration, c.lr_policy, c.rampup_zero_based, c.consistency) == (15000, "constant", False, 1.0)
    assert c.network_kwargs["num_decoders"] == 2


def test_sassnet_weight_depends_on_the_labeled_budget_as_its_readme():
    assert config(LA, "--method", "sassnet", "--labelnum", "16").consistency == 0.01
    assert config(LA, "--method", "sassnet", "--labelnum", "8").consistency == 0.015
    assert config(LA, "--method", "sassnet", "--labelnum", "4").consistency == 0.015


@pytest.mark.parametrize("method", BASELINES + ["ss_net", "supervised"])
@pytest.mark.parametrize("preset", [LA, ACDC], ids=["LA", "ACDC"])
def test_shared_schedule_is_ss_nets_and_keeps_the_methods_weight_and_dice(method, preset):
    recipe_config = config(preset, "--method", method)
    shared = config(preset, "--method", method, "--schedule", "shared")
    s = preset.schedule
    assert (shared.max_iteration, shared.lr_policy, shared.lr_step, shared.consistency_rampup,
            shared.rampup_zero_based, shared.consistency_off) == (s.max_iteration, s.lr_policy, s.lr_step,
                                                                 s.consistency_rampup, s.rampup_zero_based, 0)
    assert shared.consistency == recipe_config.consistency
    assert shared.dice_smooth == recipe_config.dice_smooth
    if method in ("ss_net", "supervised"):  # SS-Net's recipe is the shared schedule
        assert shared.max_iteration == recipe_config.max_iteration and shared.lr_policy == recipe_config.lr_policy


def test_flags_override_single_values_of_the_schedule():
    c = config(LA, "--method", "ua_mt", "--max_iteration", "100", "--lr_policy", "poly", "--consistency_rampup",
               "2", "--rampup_zero_based", "0", "--consistency_off", "5")
    assert (c.max_iteration, c.lr_policy, c.consistency_rampup, c.rampup_zero_based, c.consistency_off) == (
        100, "poly", 2.0, False, 5)
    assert c.lr_step == 2500  # not given: still the recipe's


# -- LR policies and ramp counters -------------------------------------------------------------------------------
def test_learning_rate_policies_follow_the_scripts_counters():
    # SSL4MIS poly: computed after the step from the counter before its increment -> iterations 1 and 2 at base
    assert learning_rate(0, 0.01, "poly", max_iterations=30000) == 0.01
    assert learning_rate(1, 0.01, "poly", max_iterations=30000) == 0.01
    assert learning_rate(15001, 0.01, "poly", max_iterations=30000) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert learning_rate(30000, 0.01, "poly", max_iterations=30000) == pytest.approx(0.01 * (1 / 30000) ** 0.9)
    assert learning_rate(30001, 0.01, "poly", max_iterations=30000) == 0.0
    # LA step: x0.1 after the step of iteration 2500 (the counter after its increment)
    assert learning_rate(2499, 0.01, "step", 2500) == 0.01
    assert learning_rate(2500, 0.01, "step", 2500) == pytest.approx(1e-3)
    assert learning_rate(10**5, 0.01, "constant") == 0.01
    with pytest.raises(ValueError, match="choose from"):
        learning_rate(1, 0.01, "cosine")


def make(method: str, dims: int, **settings):
    torch.manual_seed(0)
    if dims == 3:
        network = build_network("vnet", num_classes=2, base_filters=4, **METHODS[method].network_options(3))
        shape, classes = (4, 1, 16, 16, 16), 2
    else:
        network = build_network("unet", num_classes=4, **METHODS[method].network_options(2))
        shape, classes = (4, 1, 32, 32), 4
    settings = {"max_iteration": 100, **settings}
    m = build_method(method, network.train(), MethodSettings(num_classes=classes, **settings))
    g = torch.Generator().manual_seed(1)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(0, classes, (2, *shape[2:]), generator=g)
    return m, Batch(images[:2], labels), Batch(images[2:], None)


def test_zero_based_warmup_counter_shifts_the_ramp_by_one_iteration():
    one_based, *_ = make("ss_net", 2, consistency=0.1, consistency_rampup=200)
    zero_based, *_ = make("ss_net", 2, consistency=0.1, consistency_rampup=200, rampup_zero_based=True)
    assert one_based.warmup_weight(150) == pytest.approx(0.1 * math.exp(-5 * (1 - 1 / 200) ** 2))
    assert zero_based.warmup_weight(150) == pytest.approx(0.1 * math.exp(-5.0))  # (150 - 1) // 150 = 0
    assert zero_based.warmup_weight(151) == one_based.warmup_weight(150)


def test_mean_teacher_gate_zeroes_the_consistency_but_keeps_the_random_draws():
    gated, labeled, unlabeled = make("mean_teacher", 2, consistency_off=1000)
    torch.manual_seed(5)
    out = gated(labeled, unlabeled, StepContext(1000))
    state_gated = torch.get_rng_state()
    assert out.terms["consistency"] == 0 and out.loss.item() == pytest.approx(out.terms["supervised"].item())
    open_, labeled, unlabeled = make("mean_teacher", 2, consistency_off=1000)
    torch.manual_seed(5)
    after = open_(labeled, unlabeled, StepContext(1001))
    assert after.terms["consistency"] > 0
    assert torch.equal(state_gated, torch.get_rng_state())  # the teacher ran in both: same draws


def test_ua_mt_threshold_uses_the_recipe_counter_and_run_length():
    m, labeled, unlabeled = make("ua_mt", 3, rampup_zero_based=True, max_iteration=6000)
    out = m(labeled, unlabeled, StepContext(1))
    assert out.monitors["uncertainty_threshold"].item() == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    out = m(labeled, unlabeled, StepContext(6001))  # counter 6000 = the end of the ramp
    assert out.monitors["uncertainty_threshold"].item() == pytest.approx(math.log(2))


def test_masked_mse_divides_by_two_whatever_the_class_count():
    student = torch.full((1, 4, 3), 0.25)
    teacher = torch.zeros(1, 4, 3)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 3)
    masked_mean = 0.25 ** 2  # every certain element differs by 0.25
    assert masked_mse(student, teacher, mask).item() == pytest.approx(2 * masked_mean)  # 4 classes: twice the mean


# -- runs saved before the recipes keep their behaviour when resumed ----------------------------------------------
def test_settings_missing_from_an_older_config_take_the_values_the_run_had(tmp_path):
    new = config(LA)
    saved = {k: v for k, v in json.loads(new.to_json()).items()
             if k not in ("schedule", "lr_policy", "rampup_zero_based", "consistency_off", "memory_weights",
                          "dice_include_background", "dice_squared_denominator", "dice_smooth")}
    legacy = legacy_settings(saved)
    assert legacy["memory_weights"] == "learned" and legacy["schedule"] == "shared"
    assert legacy["dice_smooth"] == PRESETS["LA"].dice.smooth
    assert "memory_weights" not in legacy_settings({**saved, "method": "mean_teacher"})
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resumed = resumed_config(tmp_path, {})
    assert resumed.memory_weights == "learned" and resumed.lr_policy == "step"


# -- through the train script: the recipe reaches the run's config and its optimiser -------------------------------
def test_train_acdc_runs_the_mean_teacher_recipe_with_poly_lr(acdc_root, tmp_path):
    import train_acdc

    run = tmp_path / "run"
    assert train_acdc.main(["--root_path", str(acdc_root), "--lists_dir", str(acdc_root), "--labelnum", "1",
                            "--method", "mean_teacher", "--max_iteration", "3", "--eval_every", "3",
                            "--eval_start", "3", "--patch_size", "64,64", "--batch_size", "4", "--labeled_bs", "2",
                            "--num_workers", "0", "--device", "cpu", "--no_progress", "--image_every", "0",
                            "--save_every", "3", "--run_dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["schedule"], saved["lr_policy"], saved["consistency_off"], saved["dice_smooth"]) == (
        "recipe", "poly", 1000, 1e-5)
    state = torch.load(next((run / "checkpoints").glob("iter_*.pth")), weights_only=True)
    lr_after_three = state["optimizer"]["param_groups"][0]["lr"]
    assert lr_after_three == pytest.approx(learning_rate(3, 0.01, "poly", max_iterations=3))
    assert lr_after_three == pytest.approx(0.01 * (1 / 3) ** 0.9)
