"""How fast does DSQNet run, eager and compiled, and how close to the machine's matmul peak?

For each model (Swin-T and ViTAEv2-S by default), device (CPU, and CUDA when present), precision
(fp32, bf16 autocast; ``--precisions`` adds fp16 on CUDA) and path (eager, and compiled as
``Predictor`` compiles it, ``dsqnet.compiled``): pairs/s and megapixels/s on 512 x 512 pairs,
forward FLOPs (torch.utils.flop_counter, 2 per multiply-add; matmuls and convolutions only), the
same run's matmul peak and the fraction achieved, and the head's share: the whole network's time
over the time of its backbone pass alone, minus one; and ``head alone``, the head's own time on
features made beforehand over the backbone's (a difference of two larger times moves by several
points between runs; this does not). All paths of one model and precision are
timed in turns, so that the machine's drift affects them alike and their ratios hold.

Operations per forward, the CPU proxy for GPU speed (issue #22): ``ops`` is the eager forward's
top-level operations (``bench/op_counts.py``); for the compiled path, the kernels one forward runs
(generated kernels called plus operations left to aten). On CUDA, ``launches`` counts the kernel
launches the profiler sees. ``max|d|`` is the compiled logits' largest difference from the eager
ones in the same precision, ``vs fp32`` each row's largest difference from eager fp32 logits.

Goals (issue #22): ops at most a third of those when the goal was set (Swin-T 1,431, ViTAEv2-S
1,125); the head at most 10 % of the backbone's time on CPU in bf16, 25 % on a GPU. Where the CPU
only emulates bf16 (no AVX512-BF16 or AMX), bf16 rows say so: their speed is not the network's.
Each row records process-CPU/wall time; below ~1.9 on 2 cores another process took a core. On a
CPU the head's share is also given from process-CPU seconds (``head (cpu)``), which another
process's load disturbs less, the more so with ``--threads 1``.

Compiling costs minutes per model and precision on a 2-core CPU the first time, and is kept in the
inductor cache (``~/.cache/dsqnet/inductor``) for the next run. Quick look:

    python bench/model_throughput.py --models dsqnet_swin_mini --size 256
    python bench/model_throughput.py                 # dsqnet_swin_t and dsqnet_vitae_s, 512 x 512, batch 1
    python bench/model_throughput.py --devices cuda --batch 16 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import dsqnet
from dsqnet.compiled import CompiledForward, compile_mode, compiler_cache_dir
from dsqnet.predictor import cpu_has_native_bf16

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from op_counts import capture_output_code, generated_kernel_calls, gpu_launches, top_level_ops  # noqa: E402

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_GOALS = {"fp32": 0.30, "bf16": 0.25}
HEAD_GOAL = {"cpu": 0.10, "cuda": 0.25}
OPS_WHEN_SET = {"dsqnet_swin_t": 1431, "dsqnet_vitae_s": 1125}  # issue #22, eager, 512 x 512


STATISTIC = {"median": statistics.median, "min": min}
statistic = statistics.median  # --statistic: min reads a contended machine's speed better


def timed(fns: list[Callable[[], object]], device: torch.device, repeats: int,
          warmup: int) -> list[tuple[float, float, float]]:
    """Median (or least, ``--statistic min``) wall seconds of each function, its process-CPU/wall
    ratio, and the same statistic of its process-CPU seconds; the functions run in turns."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            walls[i].append(time.perf_counter() - wall)
            cpus[i].append(time.process_time() - cpu)
    return [(statistic(w), sum(c) / sum(w), statistic(c)) for w, c in zip(walls, cpus)]


def matmul_peak(device: torch.device, precision: str, repeats: int) -> float:
    """FLOP/s of a large square matmul in this precision, measured now."""
    n = 4096 if device.type == "cpu" else 8192
    dtype = torch.float32 if precision == "fp32" else AUTOCAST[precision]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    [(seconds, _, _)] = timed([lambda: a @ b], device, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def in_precision(fn: Callable[[], torch.Tensor], device: torch.device, precision: str) -> Callable[[], torch.Tensor]:
    dtype = AUTOCAST[precision]

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return fn()
    return run


def measure(model_name: str, device: torch.device, precisions: list[str], paths: list[str], mode: str,
            size: int, batch: int, repeats: int, warmup: int) -> list[dict]:
    """One row per (precision, path) of one model on one device."""
    torch.manual_seed(0)
    model = dsqnet.build_model(model_name).to(device).eval()
    img_a, img_b = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        reference = model(img_a, img_b)
    flops = counter.get_total_flops()
    rows = []
    for precision in precisions:
        whole = in_precision(lambda: model(img_a, img_b), device, precision)
        backbone = in_precision(lambda: model.features_of_dates(img_a, img_b), device, precision)
        eager_logits = whole().float()
        row_base = {"model": model_name, "device": str(device), "precision": precision, "size": size, "batch": batch,
                    "gflop_per_pair": flops / batch / 1e9}
        candidates = {"eager": {"whole": whole, "backbone": backbone,
                                "head": head_alone(model.logits_of_features, backbone, size, device, precision),
                                "ops": sum(top_level_ops(whole).values()),
                                "vs_fp32": float((eager_logits - reference).abs().max())}}
        if device.type == "cuda":
            candidates["eager"]["launches"] = gpu_launches(whole)
        if "compiled" in paths:
            candidates["compiled"] = compiled_path(model, img_a, img_b, device, precision, mode)
            compiled_logits = candidates["compiled"].pop("logits")
            candidates["compiled"]["max_abs_diff"] = float((compiled_logits - eager_logits).abs().max())
            candidates["compiled"]["vs_fp32"] = float((compiled_logits - reference).abs().max())
        fns, owners = [], []
        for path in paths:
            for part in ("whole", "backbone", "head"):
                if candidates[path].get(part) is not None:
                    fns.append(candidates[path][part])
                    owners.append((path, part))
        times = dict(zip(owners, timed(fns, device, repeats, warmup)))
        peak = matmul_peak(device, precision, repeats=max(repeats, 5))
        for path in paths:
            c = candidates[path]
            seconds, cpu_ratio, cpu_seconds = times[(path, "whole")]
            backbone_seconds, _, backbone_cpu = times.get((path, "backbone"), (None, None, None))
            head_seconds = times.get((path, "head"), (None,))[0]
            rows.append({**row_base, "path": path, "compile_mode": mode if path == "compiled" else None,
                         "seconds_per_batch": seconds, "pairs_per_s": batch / seconds,
                         "megapixels_per_s": batch * size * size / seconds / 1e6,
                         "achieved_tflops": flops / seconds / 1e12, "matmul_peak_tflops": peak / 1e12,
                         "fraction_of_peak": flops / seconds / peak, "backbone_seconds": backbone_seconds,
                         "head_share": None if backbone_seconds is None else seconds / backbone_seconds - 1,
                         "head_seconds": head_seconds,
                         "head_alone_share": None if None in (head_seconds, backbone_seconds)
                         else head_seconds / backbone_seconds,
                         "cpu_seconds_per_batch": cpu_seconds, "backbone_cpu_seconds": backbone_cpu,
                         "head_share_of_cpu_time": None if backbone_cpu is None else cpu_seconds / backbone_cpu - 1,
                         "ops_per_forward": c.get("ops"), "kernels_per_forward": c.get("kernels"),
                         "generated_kernels": c.get("generated"), "aten_ops_left": c.get("extern"),
                         "gpu_launches": c.get("launches"), "compile_seconds": c.get("compile_seconds"),
                         "max_abs_diff": c.get("max_abs_diff"), "max_abs_diff_vs_eager_fp32": c.get("vs_fp32"),
                         "cpu_per_wall": cpu_ratio if device.type == "cpu" else None,
                         "bf16_emulated": precision == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False})
    del reference
    return rows


def head_alone(head: Callable, backbone: Callable, size: int, device: torch.device,
               precision: str) -> Callable[[], torch.Tensor]:
    """The head on features the backbone made once, in the same precision. They are copied out, so
    that a backbone run in between (CUDA graphs reuse their output buffers) leaves them alone."""
    features = [f.clone() for f in backbone()]
    return in_precision(lambda: head(features, (size, size)), device, precision)


def compiled_path(model, img_a, img_b, device, precision, mode) -> dict:
    """The compiled forward as ``Predictor`` runs it, its kernels per forward, and its backbone graph alone."""
    forward = CompiledForward(model, mode)
    whole = in_precision(lambda: forward(img_a, img_b), device, precision)
    started = time.perf_counter()
    codes = capture_output_code(whole)
    compile_seconds = time.perf_counter() - started
    generated = generated_kernel_calls(codes)
    extern = sum(top_level_ops(whole).values())
    result = {"whole": whole, "logits": whole().float(), "generated": generated, "extern": extern,
              "kernels": generated + extern, "compile_seconds": compile_seconds,
              "backbone": in_precision(lambda: forward.features(img_a, img_b), device, precision)}
    result["head"] = head_alone(forward.head, result["backbone"], img_a.shape[-1], device, precision)
    if device.type == "cuda":
        result["launches"] = gpu_launches(whole)
    return result


def print_row(r: dict) -> None:
    device = r["device"].split(":")[0]
    goal = PEAK_GOALS.get(r["precision"])
    peak_mark = "" if goal is None else (" ok" if r["fraction_of_peak"] >= goal else " LOW")
    head = "-" if r["head_share"] is None else f"{r['head_share']:6.1%}"
    if r["head_share"] is not None and r["precision"] != "fp32":
        head += " ok" if r["head_share"] <= HEAD_GOAL[device] else " HIGH"
    if device == "cpu" and r["head_share_of_cpu_time"] is not None:
        head += f" {r['head_share_of_cpu_time']:.1%}"
    alone = "-" if r["head_alone_share"] is None else f"{r['head_alone_share']:.1%}"
    if r["head_alone_share"] is not None and r["precision"] != "fp32":
        alone += " ok" if r["head_alone_share"] <= HEAD_GOAL[device] else " HIGH"
    count = r["ops_per_forward"] if r["path"] == "eager" else r["kernels_per_forward"]
    when_set = OPS_WHEN_SET.get(r["model"]) if r["size"] == 512 and r["batch"] == 1 else None
    count_text = f"{count}" + ("" if when_set is None else (" ok" if count <= when_set / 3 else " HIGH"))
    cpu = f"{r['cpu_per_wall']:.2f}" if r["cpu_per_wall"] is not None else "-"
    diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
    vs_fp32 = f"{r['max_abs_diff_vs_eager_fp32']:.1e}"
    launches = "-" if r["gpu_launches"] is None else str(r["gpu_launches"])
    prec = r["precision"] + ("*" if r["bf16_emulated"] else "")
    print(f"{r['model']:16} {device:5} {prec:5} {r['path']:8} {r['seconds_per_batch']:7.3f} "
          f"{(r['backbone_seconds'] or float('nan')):8.3f} {r['pairs_per_s']:8.2f} {r['megapixels_per_s']:6.2f} "
          f"{r['achieved_tflops']:7.3f} {r['fraction_of_peak']:6.1%}{peak_mark:4} {head:18} {alone:11} {count_text:>9} "
          f"{launches:>8} {diff:>8} {vs_fp32:>8} {cpu:>8}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", "--model", nargs="+", default=["dsqnet_swin_t", "dsqnet_vitae_s"],
                        help="registered architectures to measure, side by side (random weights)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="image pairs per forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(AUTOCAST))
    parser.add_argument("--paths", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--compile-mode", help="torch.compile mode (default: DSQNET_COMPILE_MODE, else the "
                        "device's default in dsqnet.compiled)")
    parser.add_argument("--statistic", choices=sorted(STATISTIC), default="median",
                        help="of the repeats' times; min where other processes share the machine")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global statistic
    statistic = STATISTIC[args.statistic]
    if "eager" not in args.paths:
        args.paths = ["eager", *args.paths]  # the compiled path's answers are checked against eager ones

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.2f}, {args.statistic} of {args.repeats}, "
          f"inductor cache {compiler_cache_dir()}")
    if torch.cuda.is_available():
        print(f"# {torch.cuda.get_device_name()}")
    if "cpu" in args.devices and "bf16" in args.precisions and cpu_has_native_bf16() is False:
        print("# bf16* : this CPU emulates bf16 (no AVX512-BF16, no AMX): those rows are not the network's speed")
    print(f"{'model':16} {'dev':5} {'prec':5} {'path':8} {'s/batch':>7} {'backbone':>8} {'pairs/s':>8} {'Mpx/s':>6} "
          f"{'TFLOP/s':>7} {'of peak':>10} {'head (cpu)':18} {'head alone':11} {'ops/kern':>9} {'launches':>8} {'max|d|':>8} {'vs fp32':>8} {'cpu/wall':>8}")
    results = []
    for device_name in args.devices:
        device = torch.device(device_name)
        precisions = [p for p in args.precisions if p != "fp16" or device.type == "cuda"]
        mode = args.compile_mode or compile_mode(device)
        for model_name in args.models:
            for r in measure(model_name, device, precisions, args.paths, mode, args.size, args.batch,
                             args.repeats, args.warmup):
                results.append(r)
                print_row(r)
            compiled = [r for r in results if r["model"] == model_name and r["path"] == "compiled"
                        and r["device"] == str(device)]
            for r in compiled:
                print(f"#   {model_name} {r['precision']} compiled ({r['compile_mode']}): first call {r['compile_seconds']:.0f} s, "
                      f"{r['generated_kernels']} generated kernels + {r['aten_ops_left']} aten ops per forward")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
