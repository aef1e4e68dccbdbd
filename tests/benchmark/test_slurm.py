"""``chexpert-hf benchmark --executor slurm|debug`` and ``--parallel``: the flags checked before anything is
submitted, submitit's in-process executor, and (where SLURM runs: always in CI) a real grid, a preempted run,
``--status``, ``--collect``, resubmission and ``--cancel``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from chexpert_hf.benchmark import plan
from chexpert_hf.benchmark.slurm import SlurmSettings, parse_time
from chexpert_hf.cli.main import main
from chexpert_hf.models.tiny import tiny_config
from tests.benchmark.test_benchmark import TINY as BENCHMARK_TINY

ROOT = Path(__file__).resolve().parents[2]
TINY = BENCHMARK_TINY  # a one-layer ViT at 32 px on 40 patients, one epoch, no saving


SMALL = TINY[TINY.index("--synthetic_patients") :]  # what every recipe takes (config_overrides: from scratch only)


def tiny_recipes(folder: Path) -> str:
    """tiny_scratch (from scratch) and tiny_head (the head of tiny_pretrain's output, a prerequisite recipe)."""
    from tests.benchmark.test_benchmark import write_recipe

    model = dict(config_overrides=tiny_config("vit", num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                 image_size=32, prepare_image_size=32, labels="competition")  # fmt: skip
    write_recipe(folder, "tiny_pretrain", **model)
    scratch = write_recipe(folder, "tiny_scratch", **model)
    head = write_recipe(folder, "tiny_head", from_scratch=False, model_name_or_path="outputs/tiny_pretrain",
                        freeze_policy="head", image_size=32, prepare_image_size=32, labels="competition")  # fmt: skip
    return f"{scratch},{head}"


def tiny(tmp_path: Path) -> list[str]:
    return [*TINY, "--data_cache_dir", str(tmp_path / "cache")]


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("30", 30), ("90:30", 91), ("4:00:00", 240), ("1-00", 1440), ("2-03:04", 2 * 1440 + 184), ("0-00:00:01", 1)],
)
def test_slurm_times_are_read_as_sbatch_reads_them(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["0", "0:00", "-5", "1h", "", "1-2-3", "4:00:00:00"])
def test_a_time_that_is_not_a_positive_slurm_time_is_refused(text):
    with pytest.raises(ValueError, match="--slurm_time"):
        parse_time(text)


def test_settings_become_submitit_parameters_and_bad_ones_are_refused():
    settings = SlurmSettings(partition="gpu", cpus_per_gpu=8, mem="64G", time="2:00:00", qos="high",
                             extra={"exclusive": "user"}, setup=["module load cuda"])  # fmt: skip
    assert settings.check(processes=4, has_config=True) == 4  # GPUs: the accelerate config's processes
    parameters = settings.parameters(4)
    assert parameters["gpus_per_node"] == 4 and parameters["cpus_per_task"] == 32 and parameters["time"] == 120
    assert parameters["partition"] == "gpu" and parameters["mem"] == "64G" and parameters["qos"] == "high"
    assert parameters["setup"] == ["module load cuda"] and parameters["ntasks_per_node"] == 1
    assert parameters["additional_parameters"] == {"requeue": True, "kill-on-invalid-dep": "yes", "exclusive": "user"}
    assert SlurmSettings().check(processes=1, has_config=False) == 0  # no config: a CPU job, no GPU asked for
    assert "gpus_per_node" not in SlurmSettings().parameters(0)
    with pytest.raises(ValueError, match="disagrees with the accelerate config's num_processes 4"):
        SlurmSettings(gpus_per_job=2).check(processes=4, has_config=True)
    with pytest.raises(ValueError, match="needs an --accelerate_config"):
        SlurmSettings(gpus_per_job=2).check(processes=1, has_config=False)
    with pytest.raises(ValueError, match="--slurm_mem '64 GB'"):
        SlurmSettings(mem="64 GB").check(1, False)
    with pytest.raises(ValueError, match="--slurm_extra partition: set by the benchmark or by its own"):
        SlurmSettings(extra={"partition": "x"}).check(1, False)
    with pytest.raises(ValueError, match="--slurm_max_retries must be 0 or more"):
        SlurmSettings(max_retries=-1).check(1, False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--executor", "slurm", "--slurm_time", "-1"], "--slurm_time '-1' is not a SLURM time"),
        (["--executor", "debug", "--slurm_gpus_per_job", "2"], "needs an --accelerate_config"),
        (["--slurm_partition", "gpu"], "--slurm_partition applies only with --executor slurm or debug"),
        (["--executor", "slurm", "--parallel", "2"], "--parallel is for --executor local"),
        (["--executor", "debug", "--slurm_extra", "exclusive"], "--slurm_extra 'exclusive': give KEY=VALUE"),
        (["--status", "--cancel"], "give one of --status, --collect, --cancel"),
    ],
)
def test_bad_executor_flags_are_refused_before_anything_runs(tmp_path, capsys, arguments, message):
    output = tmp_path / "bench"
    recipes = [] if "--status" in arguments else ["--recipes", "demo"]
    assert main(["benchmark", *recipes, "--output", str(output), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (output / "runs").exists()


def test_status_of_a_folder_that_is_no_benchmark_names_it(tmp_path, capsys):
    assert main(["benchmark", "--output", str(tmp_path), "--status"]) == 2
    assert f"{tmp_path / 'benchmark.json'} not found" in capsys.readouterr().err


def test_parallel_local_runs_get_disjoint_gpus_and_all_finish(tmp_path, monkeypatch):
    from tests.benchmark.test_benchmark import FakeLauncher, write_recipe

    recipes = [str(write_recipe(tmp_path / "recipes", name)) for name in ("tiny_full", "tiny_head")]
    config = tmp_path / "two_gpus.yaml"
    config.write_text("num_processes: 2\nnum_machines: 1\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    seen: list[str | None] = []

    class Recording(FakeLauncher):
        def __call__(self, run):
            seen.append(run.visible_devices)
            time.sleep(0.2)  # long enough for the two lanes to overlap
            return super().__call__(run)

    from chexpert_hf.benchmark.grid import benchmark

    fake = Recording()
    assert benchmark(recipes, [0, 1, 2], tmp_path / "bench", accelerate_config=config, launcher=fake, parallel=2) == 0
    assert len(fake.calls) == 6 and set(seen) == {"4,5", "6,7"}
    table = pd.read_csv(tmp_path / "bench" / "results.csv")
    assert list(table["status"]) == ["finished"] * 6
    assert list(zip(table["recipe"], table["seed"], strict=True)) == [
        (name, seed) for name in ("tiny_full", "tiny_head") for seed in (0, 1, 2)
    ]
    with pytest.raises(ValueError, match="--parallel 3 × 2 GPU"):
        benchmark(recipes, [0], tmp_path / "other", accelerate_config=config, launcher=fake, parallel=3)


def test_a_parallel_grid_stopped_by_ctrl_c_returns_130_and_resumes(tmp_path, capsys):
    from chexpert_hf.benchmark.grid import benchmark
    from tests.benchmark.test_benchmark import FakeLauncher, write_recipe

    recipe = str(write_recipe(tmp_path / "recipes", "tiny_full"))

    class Interrupting(FakeLauncher):
        def __call__(self, run):
            if run.seed == 1:
                raise KeyboardInterrupt
            return super().__call__(run)

    assert benchmark([recipe], [0, 1, 2], tmp_path / "bench", launcher=Interrupting(), parallel=2) == 130
    assert "Run the same command again to resume" in capsys.readouterr().out
    resumed = FakeLauncher()
    assert benchmark([recipe], [0, 1, 2], tmp_path / "bench", launcher=resumed, parallel=2) == 0
    assert 1 in [run.seed for run in resumed.calls] and len(resumed.calls) <= 2


def test_a_job_restarted_more_than_max_retries_times_is_failed_without_training(tmp_path, monkeypatch):
    from chexpert_hf.benchmark.slurm import TrainingJob, state_path

    run = plan.plan(["demo"], [0], tmp_path / "bench").runs[0]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(RuntimeError, match="stopped after 2 restarts"):
        TrainingJob(tmp_path / "bench", max_retries=2)(run, ["false"])
    record = json.loads(state_path(tmp_path / "bench", run).read_text())
    assert record["state"] == "failed" and record["attempt"] == 3 and record["job_id"] == "77"
    assert not run.log.exists()  # nothing was launched


def test_the_debug_executor_runs_the_jobs_here_through_the_slurm_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    debug = tmp_path / "debug"
    grid = ["benchmark", "--recipes", "demo", "--seeds", "3", *tiny(tmp_path), "--output", str(debug)]
    assert main([*grid, "--executor", "debug"]) == 0
    assert "submitted 1 run(s)" in capsys.readouterr().out
    table = pd.read_csv(debug / "results.csv")
    assert list(table["status"]) == ["finished"] and 0.0 <= table["mean_auroc"][0] <= 1.0
    record = json.loads((debug / "slurm" / "state" / "demo-seed3.json").read_text())
    assert record["state"] == "done" and record["attempt"] == 0 and record["resumed"] is False
    assert json.loads((debug / "benchmark.json").read_text())["executor"] == "debug"
    assert main(grid) == 0  # the local executor finds the run finished: the same settings check
    assert "finished before, skipped" in capsys.readouterr().out


# --- a real SLURM (CI starts one; elsewhere these skip) --------------------------------------------------------


def test_a_grid_on_slurm_with_a_preempted_job_gives_the_local_results(slurm_partition, tmp_path, monkeypatch, capsys):
    """Two recipes × two seeds, one of them starting from a prerequisite recipe (tiny_head from tiny_pretrain): the
    prerequisite runs first and the runs that need it wait for it. One job stops after its first checkpoint and is
    preempted (``scontrol requeue``); its next attempt resumes from that checkpoint. results.csv, and the preempted
    run's weights, equal what the local executor gives for the same runs."""
    ready = tmp_path / "ready"
    script = ROOT / "tests" / "scripts" / "pause_after_first_save.py"
    original = plan.Run.command

    def through_the_script(self):  # the same training arguments, run by the script that pauses one SLURM job
        command = original.fget(self)
        start = command.index("chexpert_hf.training.train") + 1
        return [sys.executable, str(script), str(ready), *command[start:]]

    monkeypatch.setattr(plan.Run, "command", property(through_the_script))
    monkeypatch.chdir(tmp_path)
    recipes, cache = tiny_recipes(tmp_path / "recipes"), tmp_path / "cache"
    steps = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "5"]
    grid = ["benchmark", "--recipes", recipes, "--seeds", "0,1", *SMALL, *steps, "--data_cache_dir", str(cache)]
    on_slurm = [*grid, "--output", str(tmp_path / "slurm"), "--executor", "slurm", "--slurm_poll", "1",
                "--slurm_partition", slurm_partition, "--slurm_time", "15"]  # fmt: skip
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(main(on_slurm)))
    waiter.start()
    try:
        for _ in range(300):
            if ready.exists() or not waiter.is_alive():
                break
            time.sleep(0.5)
        paused, step = ready.read_text().split()  # the run folder of the job that paused, after checkpoint-2
        run = Path(paused)
        key = f"{run.parent.name}-{run.name}"
        job = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())[key]["job_id"]
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    finally:
        waiter.join(timeout=400)
    out = capsys.readouterr().out
    assert result == [0], out
    assert step == "2" and "tiny_pretrain (prerequisite): " in out and "submitted as job" in out
    prerequisite = out.split("submitted as job ", 1)[1].split()[0]
    assert f"submitted 2 run(s) after job {prerequisite}" in out  # tiny_head's two seeds wait for it
    # the local grid in the same folder reuses the prerequisite the SLURM grid trained
    assert main([*grid, "--output", str(tmp_path / "local"), "--parallel", "2"]) == 0
    assert "tiny_pretrain" not in capsys.readouterr().out
    local, slurm = (pd.read_csv(tmp_path / name / "results.csv") for name in ("local", "slurm"))
    assert list(slurm["status"]) == ["finished"] * 4
    columns = ["recipe", "seed", "mean_auroc", *[name for name in local.columns if name.startswith("auroc_")]]
    pd.testing.assert_frame_equal(local[columns], slurm[columns], check_exact=True)
    # the preempted run: resumed from its checkpoint, the uninterrupted run's weights
    relative = run.relative_to(tmp_path / "slurm")
    expected, resumed = (load_file(tmp_path / name / relative / "model.safetensors") for name in ("local", "slurm"))
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    assert json.loads((run / "run_info.json").read_text())["resumed_from"].endswith("checkpoint-2")
    log = (tmp_path / "slurm" / "logs" / f"{key}.log").read_text()
    assert "--- attempt 2 on " in log and "--resume_from_checkpoint last" in log
    state = json.loads((tmp_path / "slurm" / "slurm" / "state" / f"{key}.json").read_text())
    assert state["state"] == "done" and state["attempt"] == 1 and state["resumed"] is True
    # the state lives in the output folder: --status needs nothing but --output
    assert main(["benchmark", "--output", str(tmp_path / "slurm"), "--status"]) == 0
    status = capsys.readouterr().out
    assert status.count(" done ") == 5 and "logs/tiny_head-seed1.log" in status


def test_an_unknown_partition_is_refused_before_anything_is_submitted(slurm_partition, tmp_path, capsys):
    output = tmp_path / "bench"
    arguments = ["benchmark", "--recipes", "demo", "--output", str(output), "--executor", "slurm"]
    assert main([*arguments, "--slurm_partition", "no-such-partition"]) == 2
    error = capsys.readouterr().err
    assert "--slurm_partition 'no-such-partition' is not a partition here" in error and slurm_partition in error
    assert not (output / "slurm").exists()


def test_pending_jobs_collect_status_and_cancel(slurm_partition, tmp_path, monkeypatch, capsys):
    """A grid whose second seed cannot start yet (held): the same command again submits only that missing run,
    --collect writes the finished seed's tables, --status lists the pending one, --cancel cancels it, and the
    benchmark that was waiting says how to follow them."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "bench"
    arguments = ["benchmark", "--recipes", "demo", "--seeds", "0", "--output", str(output), "--executor", "slurm",
                 "--slurm_poll", "1", "--slurm_time", "15", *tiny(tmp_path)]  # fmt: skip
    assert main(arguments) == 0
    capsys.readouterr()
    held = [*arguments, "--slurm_extra", "begin=now+1hour"]
    held[held.index("0")] = "0,1"

    def stop_waiting(*_args, **_kwargs):
        raise KeyboardInterrupt  # as Ctrl-C while the benchmark waits

    monkeypatch.setattr("chexpert_hf.benchmark.grid.follow", stop_waiting)
    assert main(held) == 130
    out = capsys.readouterr().out
    assert "submitted 1 run(s)" in out and "the jobs keep running" in out and "--status" in out
    assert main(["benchmark", "--output", str(output), "--status"]) == 0
    status = capsys.readouterr().out
    assert "demo seed 0" in status and " done " in status
    seed1 = next(line for line in status.splitlines() if "demo seed 1" in line)
    assert " pending " in seed1
    assert main(["benchmark", "--output", str(output), "--collect"]) == 0
    table = pd.read_csv(output / "results.csv")
    assert list(table["status"]) == ["finished", "pending"]
    assert "Not finished yet" in (output / "results.md").read_text()
    assert main(["benchmark", "--output", str(output), "--cancel"]) == 0
    assert "cancelled 1 job(s)" in capsys.readouterr().out
    for _ in range(30):
        if subprocess.run(["squeue", "-h", "-j", seed1.split()[3]], capture_output=True, text=True).stdout == "":
            break
        time.sleep(0.5)
    assert main(["benchmark", "--output", str(output), "--status"]) == 0
    assert " failed " in next(line for line in capsys.readouterr().out.splitlines() if "demo seed 1" in line)
