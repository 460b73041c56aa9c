"""generator/farm.py device binding, and the launcher configs in conf/hydra/launcher/ composing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from generator.farm import FarmDeviceWarning, apply_plan, cpu_threads, plan_render_device, visible_gpus

ROOT = Path(__file__).resolve().parent.parent
PROBE_CONF = ROOT / "tests" / "apps" / "slurm_probe" / "conf"


@pytest.fixture
def no_driver(tmp_path):
    """A /proc/driver/nvidia/gpus stand-in with no GPUs (the CI machine has none either)."""
    return tmp_path / "no-such-dir"


@pytest.fixture
def four_gpu_driver(tmp_path):
    root = tmp_path / "gpus"
    for bus in ("0000:07:00.0", "0000:0b:00.0", "0000:48:00.0", "0000:4c:00.0"):
        (root / bus).mkdir(parents=True)
    return root


def test_slurm_localid_picks_one_of_the_jobs_gpus(no_driver):
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "SLURM_LOCALID": "2", "SLURM_CPUS_PER_TASK": "6"}
    plan = plan_render_device("gpu", env=env, proc_root=no_driver)
    assert (plan.cycles_device, plan.compute_device_type, plan.cuda_visible_devices) == ("GPU", "CUDA", "6")
    assert plan.threads == 6 and "SLURM_LOCALID=2" in plan.reason


def test_more_tasks_than_gpus_share_round_robin_and_uuids_are_kept(no_driver):
    env = {"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb", "SLURM_LOCALID": "3"}
    plan = plan_render_device("auto", backend="optix", env=env, proc_root=no_driver)
    assert (plan.cuda_visible_devices, plan.compute_device_type) == ("GPU-bbb", "OPTIX")


def test_without_variable_the_driver_list_is_used(four_gpu_driver):
    assert visible_gpus({}, four_gpu_driver) == ["0", "1", "2", "3"]
    plan = plan_render_device("auto", env={"SLURM_LOCALID": "1"}, proc_root=four_gpu_driver)
    assert plan.cuda_visible_devices == "1"


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_gpu_wanted_but_hidden_falls_back_to_cpu_with_warning(value, four_gpu_driver):
    # The driver shows GPUs, but the job was given none: the variable wins.
    with pytest.warns(FarmDeviceWarning, match="CUDA_VISIBLE_DEVICES"):
        plan = plan_render_device("gpu", env={"CUDA_VISIBLE_DEVICES": value}, proc_root=four_gpu_driver)
    assert (plan.cycles_device, plan.compute_device_type, plan.cuda_visible_devices) == ("CPU", "NONE", None)


def test_no_gpu_at_all_auto_is_quiet_gpu_warns(no_driver, recwarn):
    assert plan_render_device("auto", env={}, proc_root=no_driver).cycles_device == "CPU"
    assert not [w for w in recwarn if issubclass(w.category, FarmDeviceWarning)]
    with pytest.warns(FarmDeviceWarning, match="no NVIDIA GPU"):
        assert plan_render_device("gpu", env={}, proc_root=no_driver).cycles_device == "CPU"


def test_cpu_request_ignores_gpus(four_gpu_driver):
    plan = plan_render_device("cpu", env={"CUDA_VISIBLE_DEVICES": "0"}, proc_root=four_gpu_driver)
    assert plan.cycles_device == "CPU" and not plan.uses_gpu


def test_bad_choices_name_the_value():
    with pytest.raises(ValueError, match="'tpu'"):
        plan_render_device("tpu", env={})
    with pytest.raises(ValueError, match="'HIP'"):
        plan_render_device("gpu", backend="hip", env={})


def test_threads_from_slurm_else_affinity():
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "3"}) == 3
    # Without a usable Slurm value: the CPUs this process may run on, not 1 and not the node's count.
    own = len(os.sched_getaffinity(0))
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "junk"}) == own
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "0"}) == own
    assert cpu_threads({}) == own
    # A process pinned to one core (as a Slurm task with cpus_per_task=1 is) gets 1.
    pinned = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
         "from generator.farm import cpu_threads; print(cpu_threads({}))"],
        capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
    )
    assert pinned.stdout.strip() == "1"


def test_apply_plan_exports_for_the_worker(no_driver):
    env = {"CUDA_VISIBLE_DEVICES": "4,5", "SLURM_LOCALID": "1", "SLURM_CPUS_PER_TASK": "2"}
    apply_plan(plan_render_device("gpu", env=env, proc_root=no_driver), env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["OMP_NUM_THREADS"] == "2"
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}
    apply_plan(plan_render_device("cpu", env=env, proc_root=no_driver), env)
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_exported_choice_reaches_a_spawned_process(no_driver, monkeypatch):
    """The point of binding before Blender starts: a child started afterwards sees one GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored afterwards: apply_plan sets it
    apply_plan(plan_render_device("gpu", proc_root=no_driver))
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3"


# ----------------------------------------------------------------------------------------------
# launcher configs (composition only; tests/test_slurm_cluster.py runs them on a real cluster)


def _launcher(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(PROBE_CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "out_dir=x",
                f"hydra/launcher={name}",
                f"hydra.searchpath=[file://{ROOT / 'conf'}]",
                *overrides,
            ],
            return_hydra_config=True,
        )
    return cfg.hydra.launcher


def test_slurm_cpu_and_gpu_configs_extend_submitit_slurm():
    cpu, gpu = _launcher("slurm_cpu"), _launcher("slurm_gpu")
    for cfg in (cpu, gpu):
        assert cfg._target_.endswith("SlurmLauncher")
        assert cfg.max_num_timeout > 0 and cfg.timeout_min > 0 and cfg.array_parallelism > 0
        assert any("ulimit -c 0" in line for line in cfg.setup)
    assert cpu.gpus_per_node is None and gpu.gpus_per_node == 1
    assert _launcher("slurm_gpu", "hydra.launcher.partition=gpu").partition == "gpu"


def _readme_launcher_table() -> dict[str, dict[str, str]]:
    """The launcher table of README.md ("| config | partition | timeout_min | ..."), by config name."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith("| config | partition | timeout_min"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header) or not cells[0].startswith("`"):
            break
        rows[cells[0].strip("`")] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def test_launcher_configs_hold_the_values_the_readme_documents():
    table = _readme_launcher_table()
    assert set(table) == {"slurm_cpu", "slurm_gpu", "local"}
    for name in ("slurm_cpu", "slurm_gpu"):
        cfg, row = _launcher(name), table[name]
        assert (cfg.partition is None) == (row["partition"] == "cluster default"), name
        for key in ("timeout_min", "cpus_per_task", "mem_gb", "array_parallelism", "max_num_timeout"):
            assert cfg[key] == int(row[key]), (name, key)
        assert cfg.gpus_per_node == (None if row["gpus_per_node"] == "–" else int(row["gpus_per_node"])), name
    assert _launcher("local").timeout_min == int(table["local"]["timeout_min"])


def test_local_config_extends_submitit_local():
    assert _launcher("local")._target_.endswith("LocalLauncher")


def test_a_bad_launcher_value_fails_at_compose_naming_its_key():
    with pytest.raises(ConfigCompositionException) as err:
        _launcher("slurm_cpu", "hydra.launcher.cpus_per_task=many")
    assert "cpus_per_task" in str(err.value) + str(err.value.__cause__)
