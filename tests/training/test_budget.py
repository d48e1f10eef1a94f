"""A time budget instead of an iteration count (issue 24.1): durations, the plan, and real budgeted runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyogrio
import pytest
import torch
import yaml

from pipelines import train as train_cli
from rs_deeplab.cli.durations import duration_text, parse_duration
from rs_deeplab.cli.errors import ConfigError, InputError
from rs_deeplab.config.schema import load_config
from rs_deeplab.training.budget import CHECKPOINT_SECONDS, EVALUATIONS, PROBE_ITERATIONS, Measured, plan_budget
from rs_deeplab.training.experiment import train_experiment
from tests.badkit import ENV
from tests.trainkit import REPO, make_tiles, torchrun


def test_durations() -> None:
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("2.5m") == 150 and parse_duration("600") == 600 and parse_duration(45) == 45
    assert parse_duration(" 1H 5M ") == 3900
    for bad in ("soon", "15 minutes", "-5m", "0", "5m later", "", "m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert duration_text(5400) == "1h30m" and duration_text(45.4) == "45s" and duration_text(0) == "0s"


def test_plan_spends_what_is_left_on_iterations_and_evaluations() -> None:
    plan = plan_budget(600, Measured(spent=30, step=0.5), done=12, val_batches=50)
    evaluation = 50 * 0.5 * 0.4  # estimated from the training step until one is timed
    assert plan.evaluation_seconds == evaluation
    more = plan.iterations - 12
    assert more * 0.5 + EVALUATIONS * (evaluation + 1.0) <= 570 < (more + 1) * 0.5 + EVALUATIONS * (evaluation + 1.0)
    assert plan.eval_every == plan.checkpoint_every == -(-plan.iterations // EVALUATIONS)
    assert plan.warmup_iters == max(round(plan.iterations * 0.03), PROBE_ITERATIONS)
    assert set(plan.reasons) == {"iterations", "eval_every", "checkpoint_every", "warmup_iters"}
    # a busier machine later: the re-plan from the measured costs shortens the run
    slower = plan_budget(
        600, Measured(spent=300, step=1.5, evaluation=20, checkpoint=2), done=200, val_batches=50, evaluations_done=1
    )
    assert slower.iterations == 200 + int((300 - 3 * 22) // 1.5) < plan.iterations
    # the config's values win; schedule.iterations caps
    fixed = plan_budget(600, Measured(30, 0.5), done=12, val_batches=50, cap=100, fixed={"eval_every": 7})
    assert (fixed.iterations, fixed.eval_every, fixed.reasons["eval_every"]) == (100, 7, "set in the config")
    frequent = plan_budget(
        600, Measured(30, 0.5, evaluation=9, checkpoint=1), done=12, val_batches=50, fixed={"eval_every": 100}
    )
    stops = -(-(frequent.iterations - 12) // 100)  # the evaluations the config's cadence brings are paid for
    assert (frequent.iterations - 12) * 0.5 + stops * 10 <= 570
    # evaluations that no longer fit are dropped before the run gives up; then one line says what it needs
    tight = plan_budget(60, Measured(spent=40, step=0.5, evaluation=6, checkpoint=0), done=12, val_batches=50)
    assert tight.iterations == 12 + 28 and tight.reasons["eval_every"].startswith("1 evaluation(s)")
    with pytest.raises(InputError, match=r"schedule.budget 1m is too short: 50s spent, an iteration takes 0.50 s"):
        plan_budget(60, Measured(spent=50, step=0.5), done=12, val_batches=50)


def config(folder: Path, budget: str, tiles: Path | None = None, **train: object) -> Path:
    tiles = tiles or make_tiles(folder)
    cfg = {
        "work_dir": str(folder / "runs" / "budget"),
        "data": {
            "source": "tiles",
            "root": str(tiles),
            "scheme": "potsdam",
            "crop_size": 48,
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        "optimizer": {"lr": 0.01},
        "schedule": {"budget": budget, "min_lr": 0.0},
        "train": {"log_every": 5, **train},
    }
    path = folder / "budget.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BUDGET = 20
"""Seconds the budgeted runs below train: the probe alone may take 10 s on a loaded 2-core machine, and what is left
still pays for several iterations and evaluations."""


@pytest.mark.slow
def test_a_budgeted_run_plans_from_its_own_speed_and_resumes_with_its_plan(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, f"{BUDGET}s"))
    result = train_experiment(cfg)
    plan = json.loads((result.run_dir / "plan.json").read_text())
    assert result.iterations == plan["iterations"] > PROBE_ITERATIONS
    reason = plan["reasons"]["iterations"]  # the last re-plan's: what was left paid for, or nothing more
    assert plan["budget"] == BUDGET and plan["step_seconds"] > 0 and ("left pays for" in reason or "ran out" in reason)
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    record = state["budget"]
    assert state["iteration"] == result.iterations and record["finished"] and record["plan"] == plan
    # the run kept to its budget by its own measurements: what it spent, less the last stretch's overrun margin and
    # the checkpoint that records the spent budget after the last evaluation's (CI once measured 45.38 s against
    # 45.33 s without it), and 5 % of the budget for steps that run slower than the probe measured (CI, with the
    # run's page rewritten at each evaluation, once measured 47.16 s against 46.46 s without it)
    margin = plan["evaluation_seconds"] + plan["step_seconds"] * 3 + CHECKPOINT_SECONDS + 0.05 * BUDGET
    assert record["spent"] <= BUDGET + margin
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert any(row.startswith(f"{result.iterations},") for row in rows)
    again = train_experiment(cfg)  # resumed: the budget is spent, nothing more is trained
    assert again.iterations == result.iterations
    assert torch.load(again.last, map_location="cpu", weights_only=True)["iteration"] == result.iterations


def test_a_cap_below_the_probe_trains_to_the_cap(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, "10m"), ["schedule.iterations=4", "train.eval_every=2"])  # a smoke test's
    result = train_experiment(cfg)
    assert result.iterations == 4 and json.loads((result.run_dir / "plan.json").read_text())["eval_every"] == 2
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert len([r for r in rows if ",val," in r]) == 2


def test_budget_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "1s")
    assert train_cli.main([str(path), "--quiet", "train.eval_every=1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schedule.budget 1s is too short" in err and "give at least" in err, err
    assert not (tmp_path / "runs" / "budget").exists()  # the run folder it made is gone
    assert train_cli.main([str(path), "--budget", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'soon' is not a duration" in err, err
    with pytest.raises(ConfigError, match="not a duration"):
        load_config(path, ["schedule.budget=-3m"])


@pytest.mark.slow
def test_two_torchrun_ranks_follow_rank_zeros_plan_and_settings_and_one_validation_crop_does_not_hang(
    tmp_path: Path,
) -> None:
    """One two-rank run covers what rank 0 decides for every rank (torchrun starts are the suite's dearest steps):

    - the budget's plan: both ranks train its iterations and stop together;
    - ``auto``'s settings: rank 0 derives them and says so once, and skips the range test (one process's test);
    - evaluation with a single validation crop: rank 1 holds no batch and must not wait on collectives it never
      joins (every planned evaluation is written).
    """
    tiles = make_tiles(tmp_path / "data", val_size=64)  # 64 px crops: one validation crop
    assert (pyogrio.read_dataframe(tiles / "index.gpkg", layer="tiles")["split"] == "val").sum() == 1
    path = config(tmp_path, f"{BUDGET}s", tiles, device="cpu", log_every=1)
    cfg = yaml.safe_load(path.read_text())
    del cfg["data"]["crop_size"]  # auto derives it
    cfg["auto"], cfg["optimizer"] = {"enabled": True}, {"name": "adamw"}
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        torchrun(REPO / "pipelines" / "train.py", str(path)), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "budget"
    plan = json.loads((run / "plan.json").read_text())
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == plan["iterations"] > PROBE_ITERATIONS and state["budget"]["finished"]
    assert f"for {plan['iterations']} iterations" in proc.stdout
    record = json.loads((run / "auto.json").read_text())
    assert record["range_test"]["reason"].startswith("several processes")  # one process's test, not two
    assert record["values"]["data.crop_size"] == 64 and state["auto"]["values"] == record["values"]
    assert proc.stderr.count("auto data.crop_size") == 1, proc.stderr  # rank 0 derives and says so once
    rows = (run / "metrics.csv").read_text().splitlines()
    evaluated = [int(r.split(",")[0]) for r in rows if ",val," in r]
    assert len(evaluated) >= 2 and evaluated[-1] == plan["iterations"], rows  # the last evaluation too
