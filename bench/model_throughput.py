"""How fast does DSQNet run, and how close to the machine's matmul peak?

For each model (Swin-T and ViTAEv2-S by default), device (CPU, and CUDA when present) and
precision (fp32, bf16 autocast; fp16 on CUDA):
pairs/s and megapixels/s on 512 x 512 pairs, forward FLOPs (torch.utils.flop_counter, 2 per
multiply-add; it counts matmuls and convolutions, not RoIAlign or grid sampling), the same run's
measured matmul peak for that precision and the fraction achieved, and the head's overhead: the
whole network's time over the time of its backbone passes alone.

Goals (issue #2): fp32 >= 30 % of the fp32 matmul peak, bf16 >= 25 % of the bf16 peak, head
overhead <= 15 %. CPU timings suffer badly when another process steals a core, so each row
records process-CPU/wall time; below ~1.9 on 2 cores the figure is contended.

    python bench/model_throughput.py                 # dsqnet_swin_t and dsqnet_vitae_s, 512 x 512, batch 1
    python bench/model_throughput.py --models dsqnet_vitae_s --batch 4 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import dsqnet

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GOALS = {"fp32": 0.30, "bf16": 0.25}
HEAD_OVERHEAD_GOAL = 0.15


def timed(fns: list[Callable[[], object]], device: torch.device, repeats: int, warmup: int) -> list[tuple[float, float]]:
    """Median wall seconds of each function and its process-CPU/wall ratio.

    The functions are run in turns within each repeat, so that a slow spell of the machine
    affects all of them alike and their ratios stay meaningful.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus = [0.0 for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            walls[i].append(time.perf_counter() - wall)
            cpus[i] += time.process_time() - cpu
    return [(statistics.median(w), c / sum(w)) for w, c in zip(walls, cpus)]


def matmul_peak(device: torch.device, precision: str, repeats: int) -> float:
    """FLOP/s of a large square matmul in this precision, measured now."""
    n = 4096 if device.type == "cpu" else 8192
    dtype = torch.float32 if precision == "fp32" else AUTOCAST[precision]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    [(seconds, _)] = timed([lambda: a @ b], device, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def forward_flops(model: torch.nn.Module, img_a: torch.Tensor, img_b: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(img_a, img_b)
    return counter.get_total_flops()


def run(model_name: str, device: torch.device, precision: str, size: int, batch: int, repeats: int, warmup: int) -> dict:
    model = dsqnet.build_model(model_name).to(device).eval()
    img_a, img_b = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    both = torch.cat([img_a, img_b])
    dtype = AUTOCAST[precision]

    def whole() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(img_a, img_b)

    def backbone_only() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model.backbone(both)

    flops = forward_flops(model, img_a, img_b)
    (seconds, cpu_ratio), (backbone_seconds, _) = timed([whole, backbone_only], device, repeats, warmup)
    peak = matmul_peak(device, precision, repeats=max(repeats, 5))
    return {
        "model": model_name, "device": str(device), "precision": precision, "size": size, "batch": batch,
        "seconds_per_batch": seconds, "pairs_per_s": batch / seconds, "megapixels_per_s": batch * size * size / seconds / 1e6,
        "gflop_per_pair": flops / batch / 1e9, "achieved_tflops": flops / seconds / 1e12, "matmul_peak_tflops": peak / 1e12,
        "fraction_of_peak": flops / seconds / peak, "backbone_seconds": backbone_seconds,
        "head_overhead": seconds / backbone_seconds - 1, "cpu_per_wall": cpu_ratio if device.type == "cpu" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", "--model", nargs="+", default=["dsqnet_swin_t", "dsqnet_vitae_s"],
                        help="registered architectures to measure, side by side (random weights)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="image pairs per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.2f}")
    if torch.cuda.is_available():
        print(f"# {torch.cuda.get_device_name()}")
    header = f"{'model':15} {'device':6} {'prec':5} {'s/batch':>7} {'backbone':>8} {'pairs/s':>8} {'Mpx/s':>7} {'GFLOP/pair':>10} {'TFLOP/s':>8} {'peak':>7} {'of peak':>8} {'head':>6} {'cpu/wall':>8}"
    print(header)
    results = []
    for device_name, model_name in ((d, m) for d in args.devices for m in args.models):
        device = torch.device(device_name)
        precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
        for precision in precisions:
            r = run(model_name, device, precision, args.size, args.batch, args.repeats, args.warmup)
            results.append(r)
            goal = GOALS.get(precision)
            peak_mark = "" if goal is None else (" ok" if r["fraction_of_peak"] >= goal else " LOW")
            head_mark = " ok" if r["head_overhead"] <= HEAD_OVERHEAD_GOAL else " HIGH"
            cpu = f"{r['cpu_per_wall']:.2f}" if r["cpu_per_wall"] is not None else "-"
            print(f"{model_name:15} {device.type:6} {precision:5} {r['seconds_per_batch']:7.3f} {r['backbone_seconds']:8.3f} {r['pairs_per_s']:8.2f} {r['megapixels_per_s']:7.2f} "
                  f"{r['gflop_per_pair']:10.1f} {r['achieved_tflops']:8.3f} {r['matmul_peak_tflops']:7.3f} "
                  f"{r['fraction_of_peak']:7.1%}{peak_mark} {r['head_overhead']:5.1%}{head_mark} {cpu:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
