"""Exporting a set as an image folder to an S3 API: one PUT at a time (the earlier export) against
the PUTs of a chunk sent together (``storage.write_files_atomic``, the export now).

    python -m benchmarks.export_throughput [--classes 10 --decoded 200 --size 32 --repeats 3]
    python -m benchmarks.export_throughput --way serial     (one export one way, for timing whole processes)
    python -m benchmarks.export_throughput --latency-ms 20  (the server 20 ms away each way, as a remote store)

Starts a local S3 server (moto, in its own process, so it does not share the benchmark's GIL),
builds a random synthetic set (factor 2, so ``--decoded`` images per class), and exports it
``--repeats`` times each way, alternating, each to a fresh prefix. Reports the median seconds
and images/s of each way and their ratio. The local server answers a PUT in a few milliseconds
of CPU on this machine; a remote store adds tens of milliseconds of network per request, which
the concurrent PUTs overlap and the serial ones do not. ``--latency-ms L`` puts the server
behind a local TCP relay (its own process) that delivers every chunk, each way, L ms after it
arrived, in order: the delay of a link, not a throttle. Appends to
benchmarks/results/export_throughput.jsonl; last stdout line: JSON.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

import torch

from benchmarks.record import RESULTS, machine, report
from m3d_condense.pipeline.data import storage
from m3d_condense.pipeline.data.shards import encode_image
from m3d_condense.pipeline.results.export import decoded_uint8, export
from m3d_condense.pipeline.results.synthetic import SyntheticSet

FACTOR = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}")


def start_s3_server(latency_ms: float) -> list[subprocess.Popen]:
    """moto's S3 server on a free local port, behind a delaying relay when ``latency_ms`` > 0;
    sets the AWS_* variables s3fs reads to whichever the client should call."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_for_port(port, procs[0])
    if latency_ms > 0:
        relay = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.export_throughput", "--relay",
                                       str(relay), str(port), str(latency_ms)]))
        wait_for_port(relay, procs[1])
        port = relay
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    return procs


def relay(listen: int, target: int, latency_ms: float) -> None:
    """Forward 127.0.0.1:listen to 127.0.0.1:target, each chunk delivered latency_ms after it
    arrived (in order, so chunks in flight overlap as on a real link)."""
    import asyncio

    delay = latency_ms / 1000

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(deliver())
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay, data))
        queue.put_nowait(None)
        await sender

    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def serial_export(syn: SyntheticSet, dest: str) -> None:
    """The earlier imagefolder export's writes: every PNG by its own write_bytes_atomic."""
    counts = [0] * len(syn.class_names)
    for pixels, labels in decoded_uint8(syn):
        for image, label in zip(pixels, labels, strict=True):
            name = f"{counts[label]:05d}.png"
            storage.write_bytes_atomic(storage.join(dest, "train", syn.class_names[label], name),
                                       encode_image(image, "png"))
            counts[label] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--decoded", type=int, default=200, help="decoded images per class (a multiple of 4)")
    ap.add_argument("--size", type=int, default=32, help="decoded image side, pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--way", choices=["both", "serial", "concurrent"], default="both",
                    help="both: alternate and record; one way: export once that way, print its seconds")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay between client and server")
    ap.add_argument("--relay", nargs=3, metavar=("LISTEN", "TARGET", "MS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        relay(int(args.relay[0]), int(args.relay[1]), float(args.relay[2]))
        return
    procs = start_s3_server(args.latency_ms)
    try:
        import fsspec

        bucket = f"s3://export-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3").mkdir(bucket)
        stored = args.decoded // FACTOR**2
        g = torch.Generator().manual_seed(0)
        images = torch.rand(args.classes * stored, 3, args.size, args.size, generator=g)
        labels = torch.arange(args.classes).repeat_interleave(stored)
        syn = SyntheticSet(images, labels, FACTOR, [f"class{c}" for c in range(args.classes)])
        ways = {"serial": serial_export, "concurrent": lambda s, d: export(s, d, "imagefolder")}
        if args.way != "both":
            t0 = time.perf_counter()
            ways[args.way](syn, f"{bucket}/{args.way}")
            print(f"{args.way}: {len(syn)} images in {time.perf_counter() - t0:.2f} s")
            return
        seconds: dict[str, list[float]] = {w: [] for w in ways}
        for r in range(args.repeats):
            for way, fn in ways.items():  # alternating, so both see the same machine
                t0 = time.perf_counter()
                fn(syn, f"{bucket}/{way}{r}")
                seconds[way].append(time.perf_counter() - t0)
                print(f"{way} {r}: {seconds[way][-1]:.2f} s", file=sys.stderr, flush=True)
        n = len(syn)
        med = {w: statistics.median(v) for w, v in seconds.items()}
        report(RESULTS / "export_throughput.jsonl", {
            "images": n, "size": args.size, "serial_s": seconds["serial"], "concurrent_s": seconds["concurrent"],
            "serial_images_per_s": n / med["serial"], "concurrent_images_per_s": n / med["concurrent"],
            "speedup": med["serial"] / med["concurrent"], "store": "moto server, local",
            "latency_ms": args.latency_ms, "machine": machine()})
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
