"""benchmarks/cost_model.py: the script end to end, the invariants of its numbers, and that each
rule it applies is the pipeline's own (FLOPs, chunk size, cache tier, driver schedule, checkpoint
size)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cost_model as cm
from m3d_condense.pipeline.config.loader import compose_config, to_run_config

REPO = Path(__file__).resolve().parents[1]
# A small shape of the ImageNet presets (the real ones are counted by the full run below).
SMALL = ("data.num_classes=3", "data.image_size=[32,32]", "ipc=1", "batch_real=8", "encoder.width=16")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """The full model (both presets, IPC 1/10/50, 1/8/64 GPUs): a few seconds, FLOPs on meta tensors."""
    out = tmp_path_factory.mktemp("cost") / "cost_model.json"
    result = cm.main(["--out", str(out)])
    assert json.loads(out.read_text())["records"] == json.loads(json.dumps(result["records"]))
    return result


def rows(model: dict, **match) -> list[dict]:
    return [r for r in model["records"] if all(r[k] == v for k, v in match.items())]


def small_config(*extra: str):
    return to_run_config(compose_config("imagenet100", [*SMALL, "compile=false", *extra]))


def test_command_line_writes_one_record_per_dataset_ipc_and_gpu_count_and_prints_the_tables(tmp_path):
    out = tmp_path / "cm.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.cost_model", "--out", str(out), "--presets", "imagenet100",
                           "--ipc", "1,10", "--gpus", "1,8", "--set", "store_mb_per_s=100"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["preset"], r["ipc"], r["gpus"]) for r in result["records"]] == [
        ("imagenet100", 1, 1), ("imagenet100", 1, 8), ("imagenet100", 10, 1), ("imagenet100", 10, 8)]
    assert result["assumptions"]["store_mb_per_s"]["value"] == 100
    assert "--set store_mb_per_s=100" in result["command"]
    assert done.stdout.count("| ImageNet-100 | 10 | 8 |") == 3  # the memory, time and traffic tables


def test_every_record_field_names_its_source_and_every_assumption_its_reason(model):
    sourced = [k for keys in cm.SOURCES.values() for k in keys]
    assert len(sourced) == len(set(sourced)), "a field listed under two sources"
    for r in model["records"]:
        assert set(r) == set(sourced)
    for name, a in model["assumptions"].items():
        assert a["source"].startswith(("assumed: ", "measured: ", "measured elsewhere: ", "given: ")), name


def test_records_cover_both_presets_at_ipc_1_10_50_on_1_8_64_gpus_with_the_presets_settings(model):
    assert len(model["records"]) == 18
    for r in model["records"]:
        assert (r["encoder"], r["factor"], r["batch_real"], r["iterations"], r["image_size"]) == (
            "resnetap10", 3, 128, 1000, [224, 224])
    assert {r["num_classes"] for r in rows(model, preset="imagenet1k")} == {1000}


def test_flops_are_linear_in_classes_and_grow_with_ipc(model):
    for ipc in (1, 10, 50):
        (a,) = rows(model, preset="imagenet100", ipc=ipc, gpus=1)
        (b,) = rows(model, preset="imagenet1k", ipc=ipc, gpus=1)
        assert a["flops_per_iteration_per_class"] == b["flops_per_iteration_per_class"]
        assert b["flops_per_iteration"] == 10 * a["flops_per_iteration"]
    per_class = [rows(model, preset="imagenet1k", ipc=i, gpus=1)[0]["flops_per_iteration_per_class"] for i in (1, 10, 50)]
    assert per_class[0] < per_class[1] < per_class[2]


def test_meta_flop_count_equals_a_counted_cpu_step_at_a_small_shape():
    from benchmarks.flops import count_flops
    from m3d_condense.pipeline.data import ClassCache
    from m3d_condense.pipeline.method.engine import Condenser
    from m3d_condense.pipeline.method.spec import CondenseSpec

    cfg = small_config("chunk_classes=3")  # one forward for all classes: no chunk timing in the step
    per_class = 12
    images = torch.randint(0, 256, (3 * per_class, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    condenser = Condenser(CondenseSpec.of(cfg), ClassCache(images, {c: per_class for c in range(3)}), [0, 1, 2])
    assert cm.step_flops(cfg, per_class) == count_flops(condenser.step) > 0


def test_memory_per_class_and_synthetic_state_grow_with_ipc(model):
    for preset in ("imagenet100", "imagenet1k"):
        for n in (1, 8, 64):
            by_ipc = [rows(model, preset=preset, ipc=i, gpus=n)[0] for i in (1, 10, 50)]
            for key in ("activation_bytes_per_class", "synthetic_set_bytes_per_worker", "state_peak_bytes",
                        "checkpoint_bytes", "eval_decoded_bytes"):
                values = [r[key] for r in by_ipc]
                assert values[0] < values[1] < values[2], (preset, n, key, values)


def test_per_worker_memory_shrinks_with_workers(model):
    for preset in ("imagenet100", "imagenet1k"):
        for ipc in (1, 10, 50):
            by_gpus = [rows(model, preset=preset, ipc=ipc, gpus=n)[0] for n in (1, 8, 64)]
            for key in ("classes_per_worker_max", "cache_bytes_per_worker", "synthetic_set_bytes_per_worker",
                        "checkpoint_slice_bytes_max"):
                values = [r[key] for r in by_gpus]
                assert values[0] > values[1] > values[2], (preset, ipc, key, values)
            # what a worker needs at one class per forward: its cache (on the GPU or not), state, one class
            floor = [r["cache_bytes_per_worker"] + 8 * r["synthetic_set_bytes_per_worker"] + r["activation_bytes_per_class"]
                     for r in by_gpus]
            assert floor[0] > floor[1] > floor[2]


def test_activations_use_the_largest_chunk_that_fits_the_headroom_and_fitting_cases_stay_under_the_gpu(model):
    gpu = model["assumptions"]["gpu_memory_gib"]["value"] * cm.GiB
    for r in model["records"]:
        assert r["activation_bytes"] == r["classes_per_forward"] * r["activation_bytes_per_class"]
        assert r["activation_bytes"] <= cm.HEADROOM * gpu
        if r["memory_status"] == "fits":
            assert 1 <= r["classes_per_forward"] <= r["classes_per_worker_max"] and r["peak_bytes_estimate"] <= gpu
    (one_gpu,) = rows(model, preset="imagenet1k", ipc=50, gpus=1)  # 56 GiB of images + momentum before any step
    assert one_gpu["classes_per_forward"] == 0 and one_gpu["memory_status"] != "fits"


def test_cache_tiers_follow_the_size_of_the_workers_classes(model):
    tiers = {(r["preset"], r["gpus"]): r["cache_tier"] for r in model["records"] if r["ipc"] == 10}
    assert tiers[("imagenet100", 1)] == "device"  # ~18 GiB: under half of the free 79 GiB
    assert tiers[("imagenet1k", 1)] == "stream"  # ~180 GiB: neither the GPU nor 8 GiB of host
    assert tiers[("imagenet1k", 8)] == tiers[("imagenet1k", 64)] == "device"
    (r,) = rows(model, preset="imagenet1k", ipc=10, gpus=1)
    assert r["cache_gb_for_host_tier"] * cm.GiB >= r["cache_bytes_per_worker"] > (r["cache_gb_for_host_tier"] - 1) * cm.GiB


def test_checkpoint_size_equals_images_and_momentum_in_fp32_plus_the_loss_history(model):
    for r in model["records"]:
        images = r["num_classes"] * r["ipc"] * 3 * 224 * 224 * 4
        assert r["checkpoint_bytes"] == 2 * images + r["loss_history_bytes"]
        assert r["loss_history_bytes"] == 4 * 101 * r["num_classes"]  # iterations 0, 10, ..., 990 and 999
        assert r["checkpoint_written_bytes_per_run"] == 2 * r["checkpoint_bytes"]  # iterations 500 and 1000
        assert r["resume_read_bytes_total_all_slices"] == r["workers"] * r["checkpoint_bytes"]
        assert r["resume_read_bytes_total_own_slices"] == r["checkpoint_bytes"]
        assert r["resume_read_bytes_per_worker_own_slices"] <= r["resume_read_bytes_per_worker_all_slices"]


def test_checkpoint_formula_matches_a_slice_the_worker_writes(tmp_path):
    from m3d_condense.pipeline.config.loader import load_config
    from m3d_condense.pipeline.orchestration.worker import ClassWorker

    cfg = load_config("digits", ["iterations=25", "log_every=10", "checkpoint_every=20", "ipc=2", "encoder.width=16",
                                 "batch_real=16", "compile=false", "device=cpu"])
    worker = ClassWorker(cfg, [3, 4, 5], str(tmp_path / "run"))
    rel = worker.run_until(20, checkpoint=True).checkpoint
    size = (tmp_path / "run" / rel).stat().st_size
    rows_logged = cm.logged_rows(cfg, 20)
    assert rows_logged == len(torch.load(tmp_path / "run" / rel, weights_only=True)["losses"]) == 2
    formula = cm.checkpoint_bytes(3, cfg.ipc, cm.pixel_bytes(cfg), rows_logged)
    assert formula <= size <= formula + 8192  # torch.save's zip framing and the list of logged iterations


def test_chunk_rule_is_memory_classes_per_forward(monkeypatch):
    from m3d_condense.pipeline.method import memory
    from m3d_condense.pipeline.method.spec import CondenseSpec

    cfg = small_config()
    spec = CondenseSpec.of(cfg)
    one = memory.step_bytes(spec, 1)
    for free in (0.5 * one, 1.3 * one, 7.9 * one, 1000 * one):
        monkeypatch.setattr(memory, "free_bytes", lambda _device, free=free: int(free))
        expected = cm.chunk_of(one, 40, int(free))
        if expected == 0:
            with pytest.raises(memory.MemoryBudgetError):
                memory.classes_per_forward(spec, 40, torch.device("cuda"))
        else:
            assert memory.classes_per_forward(spec, 40, torch.device("cuda")) == expected


def test_cache_tier_rule_is_dataset_cache_tier(monkeypatch):
    from m3d_condense.pipeline.data import dataset

    cfg = small_config()
    free = 79 * cm.GiB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device=None: (free, 80 * cm.GiB))
    for nbytes in (1 * cm.GiB, 39 * cm.GiB, 40 * cm.GiB, 100 * cm.GiB):
        for cache_gb in (8.0, 200.0):
            data = dataclasses.replace(cfg.data, cache_gb=cache_gb)
            c = dataclasses.replace(cfg, data=data)
            assert cm.tier_of(c, nbytes, free) == dataset.cache_tier(data, nbytes, torch.device("cuda"))


def test_driver_stops_and_checkpoints_follow_the_drivers_schedule():
    from m3d_condense.pipeline.orchestration.driver import _next_stop

    for extra in ((), ("checkpoint_every=0",), ("checkpoint_every=300", "log_every=7")):
        cfg = small_config(*extra, "iterations=1000")
        t, stops, checkpoints = 0, 0, 0
        while t < cfg.iterations:
            t, checkpoint, _snapshot = _next_stop(t, cfg)
            stops, checkpoints = stops + 1, checkpoints + checkpoint
        assert cm.driver_stops(cfg) == (stops, checkpoints)


def test_wall_time_is_the_slowest_workers_flops_over_the_rate_plus_its_overheads(model):
    assumed = {k: v["value"] for k, v in model["assumptions"].items()}
    for r in model["records"]:
        share = r["classes_per_worker_max"] / r["num_classes"]
        # fp32 at the fraction of peak the record used (a network measured on a CPU has its own)
        rates = cm.rates({**assumed, "condense_fraction_fp32": r["condense_fraction_fp32_used"],
                          "eval_fraction_fp32": r["eval_fraction_fp32_used"]})
        for p in ("bf16", "fp32"):
            compute = r["iterations"] * r["flops_per_iteration"] * share / rates[f"condense_{p}"]
            assert r[f"compute_s_{p}"] == pytest.approx(compute)
            assert r[f"condense_s_{p}"] == pytest.approx(compute + cm.overhead_s(r))
    for preset in ("imagenet100", "imagenet1k"):
        for ipc in (1, 10, 50):
            one, eight, many = (rows(model, preset=preset, ipc=ipc, gpus=n)[0] for n in (1, 8, 64))
            # ~1/GPUs: 1000 classes over 8 GPUs = 125 each, over 64 = 16 (not 15.6), 100 over 64 = 2
            assert eight["compute_s_bf16"] == pytest.approx(one["compute_s_bf16"] * eight["classes_per_worker_max"]
                                                            / one["classes_per_worker_max"])
            assert many["compute_s_bf16"] < eight["compute_s_bf16"] < one["compute_s_bf16"]
            assert many["sync_s"] >= eight["sync_s"] > one["sync_s"] == 0  # one GPU: in-process, no actor calls
            assert one["eval_s_fp32"] == pytest.approx(3 * eight["eval_s_fp32"])  # 3 evaluation runs, in turn on one GPU


def test_a_measured_cpu_step_sets_its_networks_rate_fraction_of_peak_and_core_hours(tmp_path):
    """A recorded step of ResNetAP-10 at 224 px (as benchmarks/real_images.py writes it) gives that
    network's rate = counted FLOPs / CPU seconds, its fraction of the recorded peak, and the
    ImageNet-100 condensation's core-hours at that rate; a network not measured keeps the assumption."""
    step = {"benchmark": "real_images.step", "preset": "imagenet10", "overrides": ["data.root=/x", "ipc=1",
            "chunk_classes=1", "compile=false"], "arch": "resnetap10", "image_size": [224, 224], "ipc": 1,
            "classes_timed": 1, "real_images_cached": 50, "s_per_iteration_cpu_all_classes": 100.0, "commit": "abc"}
    peak = {"benchmark": "real_images.peak", "conv_fp32_gflops_per_cpu_s": 50.0}
    path = tmp_path / "real_images.jsonl"
    path.write_text(json.dumps(step) + "\n" + json.dumps(peak) + "\n")
    rates = cm.measured_cpu_rates(path)
    (m,) = rates.values()
    cfg10 = cm.preset_config("imagenet10", 1, ("chunk_classes=1", "compile=false"))
    assert m.flops == cm.step_flops(cfg10, 50) and m.cpu_s == 100.0  # 50 real images per class: all it held
    assert m.fraction_of_peak == pytest.approx(m.flops / 100.0 / 50e9)
    a = {k: v.value for k, v in cm.ASSUMPTIONS.items()}
    cfg = cm.preset_config("imagenet100", 10)
    used, sources = cm.with_measured_fractions(cfg, a, rates)
    assert used["condense_fraction_fp32"] == m.fraction_of_peak and "resnetap10" in sources["condense"]
    assert used["eval_fraction_fp32"] == a["eval_fraction_fp32"] and sources["eval"].startswith("assumed")
    counted = cm.count(cfg, 1300, {})
    fields = cm.cpu_fields(cfg, counted, rates, used, sources)
    assert fields["cpu_condense_core_h"] == pytest.approx(cfg.iterations * counted.flops / (m.flops / 100.0) / 3600)
    assert fields["cpu_eval_core_h_per_run"] is None


def test_the_recorded_real_image_rows_measure_the_imagenet_presets_encoder():
    """benchmarks/results/real_images.jsonl holds a measured step of ResNetAP-10 at 224 px, so the
    ImageNet-100/1K projections use that network's measured rate, not ConvNet-3's."""
    rates = cm.measured_cpu_rates()
    m = rates[("step", "resnetap10", (224, 224))]
    assert 1e9 < m.flop_per_cpu_s < 1e12  # a CPU core: between 1 GFLOP/s and 1 TFLOP/s
