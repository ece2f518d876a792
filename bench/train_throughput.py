"""Training speed of DSQNet: optimiser steps per second with the paper's batch (8 pairs of 512 crops).

Each step is the real one (``dsqnet.training.trainer.train_step``: normalisation, forward, OHEM
cross-entropy, backward, AdamW) on synthetic crops, so data loading is not part of the figure.
On CPU a Swin-T step at batch 8 takes tens of seconds; use ``--steps`` to keep runs short.

    python bench/train_throughput.py                       # dsqnet_swin_t, CPU (+ CUDA when present)
    python bench/train_throughput.py --accumulate 4        # batch 8 as 4 micro-batches of 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import dsqnet
from dsqnet.losses import OHEMCrossEntropy
from dsqnet.predictor import InputNormalizer
from dsqnet.training.trainer import train_step


def synthetic_batch(batch: int, size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "before": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
        "after": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator),
        "label": torch.randint(0, 2, (batch, size, size), generator=generator),
        "valid": torch.ones(batch, 1, size, size, dtype=torch.bool),
    }


def measure(model_name: str, device: torch.device, precision: str, batch: int, accumulate: int, size: int,
            steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = dsqnet.build_model(model_name).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    normalize = InputNormalizer.for_model(model, device)
    criterion = OHEMCrossEntropy()
    micro = [synthetic_batch(batch // accumulate, size) for _ in range(accumulate)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu = [], 0.0
    for i in range(warmup + steps):
        sync()
        wall, proc = time.perf_counter(), time.process_time()
        train_step(model, optimizer, scaler, criterion, normalize, micro, precision)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - wall)
            cpu += time.process_time() - proc
    seconds = statistics.median(times)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "it_per_s": 1 / seconds, "pairs_per_s": batch / seconds,
            "cpu_per_wall": cpu / sum(times) if device.type == "cpu" else None, "peak_gib": peak_mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dsqnet_swin_t")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 (CPU); bf16 fp16 fp32 (CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {args.model}, batch {args.batch} ({args.accumulate} micro-batches), {args.size} x {args.size}, "
          f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    print(f"{'device':6} {'prec':5} {'s/step':>8} {'it/s':>7} {'pairs/s':>8} {'cpu/wall':>8} {'peak GiB':>8}")
    for name in args.devices:
        device = torch.device(name)
        precisions = args.precisions or (["fp32", "bf16"] if device.type == "cpu" else ["bf16", "fp16", "fp32"])
        for precision in precisions:
            r = measure(args.model, device, precision, args.batch, args.accumulate, args.size, args.steps, args.warmup)
            cpu = f"{r['cpu_per_wall']:.2f}" if r["cpu_per_wall"] is not None else "-"
            mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
            print(f"{device.type:6} {precision:5} {r['seconds_per_step']:8.2f} {r['it_per_s']:7.3f} "
                  f"{r['pairs_per_s']:8.2f} {cpu:>8} {mem:>8}")


if __name__ == "__main__":
    main()
