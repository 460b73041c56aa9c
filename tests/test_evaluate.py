"""drs-evaluate end to end on tiny shards: figures recomputed independently, reports, config checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats
from skimage.metrics import structural_similarity

from generator.dataset_format import DatasetFormatError
from model import build_model, model_from_checkpoint
from model.checkpoint import save_checkpoint
from trainer.cli_evaluate import CONF_DIR, run
from trainer.evaluate import choose_subsets


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose("evaluate", overrides=list(overrides)))


def _undo_up(stored: np.ndarray, predictor: str, target: np.ndarray | None = None) -> np.ndarray:
    """Schema 2's lossless predictors, inverted here from their definition (README: dataset format):
    "up" stores each row minus the row above (mod 256), "target_up" does so for input - target."""
    if predictor == "none":
        return stored
    out = np.cumsum(stored, axis=-3, dtype=np.uint8)  # rows are axis -3 of (..., H, W, 3); wraps mod 256
    return out + target[:, None] if predictor == "target_up" else out


def _raw_arrays(dataset: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """inputs, target, sequence_id of every shard, read with plain h5py (not the project's reader)."""
    import hdf5plugin  # noqa: F401  (registers schema 2's Zstd filter with h5py)

    manifest = json.loads((dataset / "manifest.json").read_text())
    parts = []
    for entry in manifest["shards"]:
        with h5py.File(dataset / entry["file"], "r") as f:
            target = _undo_up(f["target"][()], f["target"].attrs.get("predictor", "none"))
            inputs = _undo_up(f["inputs"][()], f["inputs"].attrs.get("predictor", "none"), target)
            parts.append((inputs, target, f["sequence_id"][()]))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _psnr(pred: np.ndarray, target: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((pred - target) ** 2)))


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    from tests.fixtures_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("eval")
    data = make_tiny_dataset(root / "ds", num_sequences=6, k=5, size=32, seed=3)
    cfg = _config(f"data.test={data}", f"out_dir={root / 'out'}", "ks=[1,2,5,7]", "subsets=3")
    paths = run(cfg)
    return data, root / "out", paths


def test_subsets_are_deterministic_distinct_and_exhaustive_when_few():
    a = choose_subsets(9, 4, 5, seed=0, sequence_id=12)
    assert a == choose_subsets(9, 4, 5, seed=0, sequence_id=12)
    assert len(set(a)) == 5 and all(len(s) == 4 and list(s) == sorted(s) for s in a)
    assert a != choose_subsets(9, 4, 5, seed=0, sequence_id=13)
    assert choose_subsets(5, 5, 3, seed=0, sequence_id=0) == [(0, 1, 2, 3, 4)]  # only one set exists
    assert len(choose_subsets(4, 3, 10, seed=0, sequence_id=0)) == 4  # C(4,3): all of them
    assert choose_subsets(5, 7, 3, seed=0, sequence_id=0) == []


def test_median_and_mean_figures_agree_with_an_independent_numpy_recomputation(baseline_run):
    data, out, _ = baseline_run
    inputs, target, seq_ids = _raw_arrays(data)
    metrics = json.loads((out / "metrics.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    reducers = {"median": np.median, "mean": np.mean}

    # K = 5 is the whole sequence: one subset, no need to trust the recorded subsets at all.
    for method, reduce in reducers.items():
        per_seq = [_psnr(reduce(inputs[i] / 255.0, axis=0), target[i] / 255.0) for i in range(len(seq_ids))]
        assert metrics[method]["5"]["psnr"] == pytest.approx(np.mean(per_seq), abs=1e-4)
        ssims = [
            structural_similarity(
                target[i] / 255.0, reduce(inputs[i] / 255.0, axis=0), data_range=1.0, channel_axis=-1
            )
            for i in range(len(seq_ids))
        ]
        assert metrics[method]["5"]["ssim"] == pytest.approx(np.mean(ssims), abs=1e-5)
        assert metrics[method]["5"]["n"] == 6 and metrics[method]["5"]["subsets"] == 6

    # K = 2: recompute every recorded subset, average per sequence, then over sequences with a t-CI.
    row_of = {int(s): i for i, s in enumerate(seq_ids)}
    for method, reduce in reducers.items():
        by_seq: dict[int, list[float]] = {}
        for s in samples:
            if s["method"] == method and s["k"] == 2:
                i = row_of[s["sequence_id"]]
                value = _psnr(reduce(inputs[i][s["subset"]] / 255.0, axis=0), target[i] / 255.0)
                assert s["psnr"] == pytest.approx(value, abs=1e-4)
                by_seq.setdefault(s["sequence_id"], []).append(value)
        assert len(by_seq) == 6 and all(len(v) == 3 for v in by_seq.values())
        per_seq = np.array([np.mean(v) for v in by_seq.values()])
        half = stats.t.ppf(0.975, len(per_seq) - 1) * per_seq.std(ddof=1) / math.sqrt(len(per_seq))
        assert metrics[method]["2"]["psnr"] == pytest.approx(per_seq.mean(), abs=1e-4)
        assert metrics[method]["2"]["psnr_ci95"] == pytest.approx(half, abs=1e-4)

    # Every method saw exactly the same subsets.
    seen = {}
    for s in samples:
        seen.setdefault(s["method"], set()).add((s["sequence_id"], s["k"], tuple(s["subset"])))
    assert len({frozenset(v) for v in seen.values()}) == 1 and set(seen) == {
        "median",
        "mean",
        "weiss",
        "rpca",
    }


def test_reports_are_written_and_complete(baseline_run):
    _, out, paths = baseline_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["median", "mean", "weiss", "rpca"]
    for by_k in metrics.values():
        assert sorted(by_k) == ["1", "2", "5"]  # K = 7 exceeds the 5-image sequences: skipped
        for entry in by_k.values():
            for key in ("psnr", "ssim", "psnr_matched", "ssim_matched"):
                assert math.isfinite(entry[key]) and entry[f"{key}_ci95"] >= 0
            assert entry["seconds"] > 0
    # Matching the histogram to the target can only help the mean of a shaded sequence here.
    assert metrics["mean"]["5"]["psnr_matched"] > metrics["mean"]["5"]["psnr"]
    md = (out / "metrics.md").read_text()
    assert "K=7 skipped for 6 of 6 sequences" in md
    assert "| median | 9 | not run | 24.70 |" in md and "29.73" in md  # the paper beside ours
    assert f"| median | 1 | {metrics['median']['1']['psnr_matched']:.2f} | 16.50 |" in md
    for name in ("psnr_vs_k.png", "ssim_vs_k.png", "qualitative.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 800 and img.height > 300, name
            # Not a blank canvas: a plot or a grid has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, name
    assert paths["metrics.json"] == out / "metrics.json"


def test_bad_values_fail_naming_their_key(tmp_path):
    with pytest.raises(ValueError, match="ks must be"):
        _config("data.test=x", "out_dir=y", "ks=[0,3]")
    with pytest.raises(ValueError, match="subsets must be"):
        _config("data.test=x", "out_dir=y", "subsets=0")
    with pytest.raises(ConfigCompositionException, match="subsets"):
        _config("data.test=x", "out_dir=y", "subsets=many")
    with pytest.raises(ConfigCompositionException, match="baselines"):
        _config("data.test=x", "out_dir=y", "baselines=[median,magic]")
    with pytest.raises(Exception, match="out_dir"):
        _config("data.test=x")  # mandatory value missing


def test_a_dataset_without_targets_is_refused(tiny_dataset, tmp_path):
    data = tiny_dataset("notarget", num_sequences=2, k=3, size=16, with_target=False)
    with pytest.raises(DatasetFormatError, match="no sequence with a target"):
        run(_config(f"data.test={data}", f"out_dir={tmp_path / 'out'}", "ks=[1]", "baselines=[median]"))


def test_command_line_with_a_checkpoint_evaluates_the_network(tiny_dataset, tmp_path):
    data = tiny_dataset("net", num_sequences=2, k=4, size=32)
    torch.manual_seed(0)
    net = build_model("drs_small")
    ckpt = save_checkpoint(
        tmp_path / "net.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args
    )
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "drs-evaluate"
    proc = subprocess.run(
        [str(exe), f"checkpoint={ckpt}", f"data.test={data}", f"out_dir={out}", "ks=[1,4]", "subsets=1",
         "baselines=[median]", "device=cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["network", "median"]
    # The network's figure at K = 4 (the whole sequence) equals a direct forward pass's.
    inputs, target, _ = _raw_arrays(data)
    loaded = model_from_checkpoint(ckpt)
    values = []
    for i in range(len(inputs)):
        x = torch.from_numpy(inputs[i].astype(np.float32) / 255.0).permute(0, 3, 1, 2)[None]
        with torch.no_grad():
            y = loaded(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
        values.append(_psnr(y, target[i] / 255.0))
    assert metrics["network"]["4"]["psnr"] == pytest.approx(np.mean(values), abs=1e-3)
    assert "network" in (out / "metrics.md").read_text()
    assert (out / ".hydra" / "config.yaml").exists()  # the resolved config is kept beside the results


def test_runtime_excludes_the_first_call_of_each_shape(tiny_dataset):
    from trainer.evaluate import EvalSettings, evaluate

    data = tiny_dataset("warm", num_sequences=2, k=3, size=16)
    seen: set[tuple[int, ...]] = set()

    def slow_first(inputs: np.ndarray) -> np.ndarray:
        if inputs.shape not in seen:  # like a CUDA context or kernel autotuning on first use
            seen.add(inputs.shape)
            time.sleep(0.3)
        return inputs.mean(axis=0)

    result = evaluate(data, {"slow_first": slow_first}, EvalSettings(ks=[1, 3], subsets=1, grid_sequences=0))
    for entry in result.metrics["slow_first"].values():
        assert entry["seconds"] < 0.05
    assert result.grid == []


def test_max_sequences_scores_only_the_first_sequences_in_manifest_order(tiny_dataset, tmp_path):
    data = tiny_dataset("cap", num_sequences=6, k=3, size=16)  # shards of 4 + 2: the cap crosses a shard
    out = tmp_path / "out"
    run(_config(f"data.test={data}", f"out_dir={out}", "ks=[1,3]", "subsets=1", "baselines=[median]",
                "max_sequences=5"))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["sequence_id"] for s in samples}) == [0, 1, 2, 3, 4]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["median"]["3"]["n"] == 5 and metrics["median"]["1"]["n"] == 5
    # The K=3 median (all images) figure is the mean over exactly those five sequences.
    from generator.dataset_format import ShardReader, read_manifest

    recs = []
    for entry in read_manifest(data)["shards"]:
        with ShardReader(data / entry["file"]) as reader:
            recs += [reader.read(i) for i in range(len(reader))]
    want = np.mean([_psnr(np.median(r.inputs / 255.0, axis=0), r.target / 255.0) for r in recs[:5]])
    assert metrics["median"]["3"]["psnr"] == pytest.approx(want, abs=0.05)
    with pytest.raises(ValueError, match="max_sequences must be >= 1 or null, got 0"):
        _config(f"data.test={data}", f"out_dir={out}", "max_sequences=0")


def test_paired_wins_recomputed_from_the_samples(tiny_dataset, tmp_path):
    """metrics.json's network.paired and metrics.md's paired table agree with a recomputation from
    samples.jsonl: per sequence, subsets averaged, network minus baseline."""
    from trainer.evaluate import EvalSettings, evaluate, write_reports

    data = tiny_dataset("paired", num_sequences=5, k=4, size=16)

    def network(inputs: np.ndarray) -> np.ndarray:  # any method named "network" is compared
        return np.median(inputs, axis=0) * 0.9 + 0.05

    result = evaluate(data, {"network": network, "median": lambda x: np.median(x, axis=0),
                             "mean": lambda x: x.mean(axis=0)}, EvalSettings(ks=[2, 4], subsets=2, grid_sequences=0))
    out = tmp_path / "out"
    write_reports(result, out, {"data": str(data)})
    metrics = json.loads((out / "metrics.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for baseline in ("median", "mean"):
        for k in (2, 4):
            per = {}
            for s in samples:
                if s["k"] == k and s["method"] in ("network", baseline):
                    per.setdefault((s["method"], s["sequence_id"]), []).append(s["psnr_matched"])
            diffs = [np.mean(per[("network", sid)]) - np.mean(per[(baseline, sid)])
                     for (m, sid) in per if m == "network"]
            entry = metrics["network"]["paired"]["psnr_matched"][baseline][str(k)]
            assert entry["n"] == 5 and entry["wins"] == sum(d > 0 for d in diffs)
            assert entry["gain"] == pytest.approx(np.mean(diffs), abs=1e-9)
            assert abs(entry["gain"]) > 1e-6  # not vacuous: the two methods differ
    assert "paired by sequence (psnr_matched)" in (out / "metrics.md").read_text()
