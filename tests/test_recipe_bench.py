"""The recipe bench reads every shipped model's registry recipe as its CLIs do and extrapolates stage times soundly."""
import pytest

from replication import weights
from replication.miniworld import recipe_bench
from replication.miniworld.clip_recipe import PRESETS, SHIPPED_STAGES


def test_every_shipped_recipe_parses_into_its_stages_with_the_recipe_step_counts():
    steps = {name: [stage.steps for stage in recipe_bench.recipe_stages(weights.get_entry(name).recipe)]
             for name in recipe_bench.MINI_MODELS}
    assert steps["mini-clip-a"] == [PRESETS[s].steps for s in SHIPPED_STAGES["clip_a"]]
    assert steps["mini-clip-b"] == [PRESETS[s].steps for s in SHIPPED_STAGES["clip_b"]]
    assert steps["mini-evaluator"] == [6000]
    # the generator's steps come from each command's own flags (stage 1 from the recipe default)
    assert steps["mini-stylegan2"] == [2400, 16000, 2000, 3000]
    periods = [stage.period for stage in recipe_bench.recipe_stages(weights.get_entry("mini-clip-a").recipe)]
    assert periods == [1 if PRESETS[s].invariance_weight == PRESETS[s].direction_weight == 0 else 50
                       for s in SHIPPED_STAGES["clip_a"]] and max(periods) == 50


def test_a_stage_time_is_its_fixed_cost_plus_its_steps_at_the_marginal_rate(tmp_path, monkeypatch):
    calls = []
    clock = {"now": 0.0}

    def run(steps, scratch):
        assert scratch.is_dir()
        calls.append((steps, scratch))
        clock["now"] += 5.0 + 0.5 * steps  # 5 s to set up, 0.5 s a step

    monkeypatch.setattr(recipe_bench.time, "perf_counter", lambda: clock["now"])
    row = recipe_bench.time_stage(recipe_bench.Stage("python -m x", 1200, run), 3, 10)
    assert [c[0] for c in calls] == [3, 13]
    assert not any(c[1].exists() for c in calls)  # scratch folders are removed
    assert row["seconds_per_step"] == 0.5 and row["fixed_seconds"] == 5.0
    assert row["estimated_minutes"] == round((5.0 + 1200 * 0.5) / 60, 1)
    # a stage with periodic work is timed over whole periods, so that work is counted at its rate
    calls.clear()
    recipe_bench.time_stage(recipe_bench.Stage("python -m x", 1200, run, period=50), 3, 10)
    assert [c[0] for c in calls] == [3, 53]


def test_bad_recipe_commands_and_arguments_are_one_line_errors(capsys):
    with pytest.raises(recipe_bench.RecipeBenchError, match="cannot time recipe command"):
        recipe_bench.recipe_stages("python -m replication.pipeline.train --shift mini--sketch")
    with pytest.raises(recipe_bench.RecipeBenchError, match="expected train_clip --name"):
        recipe_bench.recipe_stages("python -m replication.miniworld.train_clip --name no_such_preset")
    with pytest.raises(recipe_bench.RecipeBenchError, match="span of at least 1"):
        recipe_bench.time_stage(recipe_bench.Stage("c", 10, lambda steps, scratch: None), 5, 0)
    assert recipe_bench.main(["--models", "mini-nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model(s) mini-nope") and "\n" not in err
