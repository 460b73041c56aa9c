"""drs-verify --repair's config handling (generator/rerender.py), without Blender.

The repair config is read back from the dataset and must reproduce the recorded content config
exactly; anything that would change the bytes is refused before a single file is moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from generator import __version__
from generator.config import CoversConfig, GenerateConfig, RenderConfig, SceneConfig, register, validate
from generator.dataset_format import MANIFEST_NAME, write_json_atomic
from generator.manifest import part_path
from generator.rerender import (
    CONF_DIR,
    RepairError,
    content_overrides,
    launcher_command,
    recorded_provenance,
    repair_config,
)
from generator.verify import main

# Not the defaults, so a repair that silently fell back to conf/generate.yaml would show.
RECORDED = GenerateConfig(
    num_sequences=5,
    sequence_length=2,
    resolution=24,
    seed=9,
    sequences_per_shard=2,
    scene=SceneConfig(lights_max=2, light_height=[0.4, 1.1]),
    render=RenderConfig(samples=3, covers_per_lighting=2),
    covers=CoversConfig(dir="/data/covers, 'scans'=2"),  # quotes, commas and '=' survive the overrides
)


def _dataset(tmp_path: Path, *, where: str = "part", version: str = __version__) -> Path:
    """A dataset whose only record is one manifest part (a farm sweep) or manifest.json."""
    dataset = tmp_path / "ds"
    record = {"config": RECORDED.content_config(), "generator_version": version, "shard_index": 1}
    write_json_atomic(part_path(dataset, 1) if where == "part" else dataset / MANIFEST_NAME, record)
    return dataset


@pytest.mark.parametrize("where", ["part", "manifest"])
def test_repair_config_reproduces_the_recorded_content(tmp_path, where):
    dataset = _dataset(tmp_path, where=where)
    cfg = repair_config(dataset, ["render.threads=1", "render.recycle_after=5"])
    assert cfg.content_config() == RECORDED.content_config()
    assert (cfg.out_dir, cfg.shard) == (str(dataset.resolve()), None)
    assert (cfg.render.threads, cfg.render.recycle_after) == (1, 5)
    assert cfg.covers.dir == RECORDED.covers.dir


def test_launcher_command_composes_back_to_the_recorded_config(tmp_path):
    cfg = repair_config(_dataset(tmp_path))
    cmd = launcher_command(cfg, [0, 2], "slurm_cpu", ["hydra.launcher.partition=cpu"])
    assert (
        cmd[1:4] == ["-m", "shard=0,2", "hydra/launcher=slurm_cpu"]
        and cmd[-1] == "hydra.launcher.partition=cpu"
    )
    # What drs-generate will compose from those overrides (less the sweep and launcher ones).
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose(config_name="generate", overrides=[*cmd[4:-1], "shard=2"])
    assert validate(composed).content_config() == RECORDED.content_config()


def test_content_overrides_are_flat_dotted_and_quoted():
    out = content_overrides(
        {"seed": 1, "scene": {"light_height": [0.5, 1.0]}, "covers": {"dir": None}, "x": "a'b"}
    )
    assert out == ["covers.dir=null", "scene.light_height=[0.5,1.0]", "seed=1", "x='a\\'b'"]


def test_an_override_that_changes_the_data_is_refused_naming_the_key(tmp_path):
    with pytest.raises(RepairError, match=r"seed: recorded 9, now 4"):
        repair_config(_dataset(tmp_path), ["seed=4"])
    with pytest.raises(RepairError, match=r"render.samples: recorded 3, now 8"):
        repair_config(_dataset(tmp_path), ["render.samples=8"])


def test_another_generator_version_is_refused_unless_allowed(tmp_path):
    dataset = _dataset(tmp_path, version="0.0.1")
    with pytest.raises(RepairError, match=r"written by generator 0.0.1.*--allow-version-change"):
        repair_config(dataset)
    assert repair_config(dataset, allow_version_change=True).content_config() == RECORDED.content_config()


def test_a_dataset_without_any_record_cannot_be_repaired(tmp_path):
    (tmp_path / "empty" / "manifest.parts").mkdir(parents=True)
    (tmp_path / "empty" / "manifest.parts" / "shard-00000.json").write_text("{torn")
    with pytest.raises(RepairError, match="records the config"):
        recorded_provenance(tmp_path / "empty")


def test_refused_repair_exits_2_and_moves_nothing(tmp_path, capsys):
    dataset = _dataset(tmp_path)  # shard 1 recorded, no shard files: every shard is missing
    # (--no-merge: this stand-in part holds only what repair reads, too little for a manifest)
    assert main([str(dataset), "--no-progress", "--no-merge", "--repair", "seed=4"]) == 2
    assert "cannot repair" in capsys.readouterr().err and not (dataset / "quarantine").exists()
    assert json.loads(part_path(dataset, 1).read_text())["shard_index"] == 1
    # Launcher settings without a launcher, and overrides without --repair, are usage errors.
    assert (
        main([str(dataset), "--no-progress", "--no-merge", "--repair", "hydra.launcher.partition=cpu"]) == 2
    )
    assert main([str(dataset), "--no-progress", "render.threads=1"]) == 2
    assert "need --repair" in capsys.readouterr().err
