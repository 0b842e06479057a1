"""Data-layer throughput: decode images/s on one core for 32 px PNG and 224 px JPEG shards, from
local disk and from a local S3 server (moto), and the engine's time per iteration when fed
from the host cache vs streamed from the shards.

    python -m benchmarks.data_throughput [--png-images 4000 --jpeg-images 600 --iterations 3]

Writes benchmarks/results/data_throughput.jsonl (one line per run) and prints, as the last
stdout line, the same JSON object.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.record import RESULTS as RESULTS_DIR
from benchmarks.record import machine, report
from m3d_condense.pipeline.config.schema import DataConfig, EncoderConfig, RunConfig
from m3d_condense.pipeline.data import ClassCache, ClassShardReader, StreamingClassCache
from m3d_condense.pipeline.data.writer import PrepareOptions, prepare
from m3d_condense.pipeline.method.engine import Condenser
from m3d_condense.pipeline.method.spec import CondenseSpec

RESULTS = RESULTS_DIR / "data_throughput.jsonl"


def photo_like(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 (n, size, size, 3): smooth random colour fields plus grain, so PNG/JPEG sizes are
    those of natural images rather than of pure noise (incompressible) or flat colour."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_source(folder: Path, classes: int, per_class: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x = photo_like(classes * per_class, size, seed=size)
    y = np.arange(classes).repeat(per_class)
    np.savez(folder / "train.npz", x=x, y=y, class_names=np.array([f"c{c}" for c in range(classes)]))
    return folder


def decode_rate(root: str, classes: int) -> float:
    """Images per second decoding every class once, in this process (one core)."""
    reader = ClassShardReader(root)
    start = time.perf_counter()
    n = sum(len(reader.read_class("train", c)) for c in range(classes))
    return n / (time.perf_counter() - start)


def engine_seconds_per_iteration(cache, classes: int, iterations: int) -> float:
    data = DataConfig(num_classes=classes, channels=3, image_size=[32, 32], mean=[0.5] * 3, std=[0.25] * 3)
    cfg = RunConfig(ipc=1, factor=2, batch_real=64, compile=False, encoder=EncoderConfig(arch="convnet3"), data=data)
    condenser = Condenser(CondenseSpec.of(cfg), cache, list(range(classes)))
    condenser.step()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        condenser.step()
    return (time.perf_counter() - start) / iterations


def start_s3():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import fsspec
    fsspec.filesystem("s3").mkdir("bench")
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png-images", type=int, default=4000, help="32 px PNG images (10 classes)")
    ap.add_argument("--jpeg-images", type=int, default=600, help="224 px JPEG images (4 classes)")
    ap.add_argument("--iterations", type=int, default=3, help="engine iterations timed per feeding mode")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON-lines file the result is appended to")
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core numbers
    tmp = Path(tempfile.mkdtemp(prefix="m3d-bench-"))
    server = start_s3()
    quiet = dict(log=lambda m: None)
    result = {"benchmark": "data_throughput", "machine": machine(), "torch": torch.__version__, "torch_threads": 1}
    cases = {"png32": (10, args.png_images // 10, 32, "png"), "jpeg224": (4, args.jpeg_images // 4, 224, "jpeg")}
    for name, (classes, per_class, size, fmt) in cases.items():
        src = write_source(tmp / name / "src", classes, per_class, size)
        opts = PrepareOptions(image_format=fmt, shard_size=200, progress=False)
        prepare(str(src), str(tmp / name / "shards"), opts, **quiet)
        result[f"{name}_local_img_per_s"] = round(decode_rate(str(tmp / name / "shards"), classes))
        if server:
            prepare(str(src), f"s3://bench/{name}", opts, **quiet)
            result[f"{name}_s3_img_per_s"] = round(decode_rate(f"s3://bench/{name}", classes))
    torch.set_num_threads(os.cpu_count() or 1)
    result["engine_threads"] = torch.get_num_threads()
    root = str(tmp / "png32" / "shards")
    reader = ClassShardReader(root)
    caches = {"cache": ClassCache.from_shards(reader, "train", range(10), progress=False),
             "stream_local": StreamingClassCache(reader, "train", range(10))}
    if server:
        caches["stream_s3"] = StreamingClassCache(ClassShardReader("s3://bench/png32"), "train", range(10))
    for mode, cache in caches.items():
        result[f"engine_s_per_it_{mode}"] = round(engine_seconds_per_iteration(cache, 10, args.iterations), 4)
    result["engine_shape"] = "cifar10-like 10 classes x 32 px, ipc 1, factor 2, real batch 64, convnet3"
    if server:
        server.stop()
    report(args.out, result)


if __name__ == "__main__":
    main()
