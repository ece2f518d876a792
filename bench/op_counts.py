"""How many operations does one DSQNet forward issue? A CPU proxy for its speed on a GPU.

On a fast GPU a forward of many small operations is bound by launching them, not by arithmetic,
so the count of top-level operations per forward (aten and other dispatcher operations called from
Python, not from inside another operation) tracks the network's GPU speed on any machine. Counted
with ``torch.profiler`` on the CPU for the whole network and for its backbone pass alone; the head
is the difference (its most frequent operations are listed). Goal (issue #22): at most a third of
the count measured when the goal was set (1,431 per Swin-T forward at 512², 500 of them in the
head; 1,125 per ViTAEv2-S forward).

For the compiled network the unit is a kernel: each generated kernel the compiled code calls
(``cpp_fused_*`` on a CPU, Triton kernels on a GPU) plus each operation it leaves to aten
(matrix products, convolutions, attention). ``bench/model_throughput.py`` reports both.

    python -m bench.op_counts                          # dsqnet_swin_t and dsqnet_vitae_s, one 512 x 512 pair
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Callable
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

from dsqnet.model import build_model

_OPERATION = re.compile(r"^\w+::\w")  # aten::mm, torchvision::roi_align; not profiler scopes
# Call sites of generated kernels in inductor's output code: C++ (CPU) and Triton (GPU).
_KERNEL_CALL = re.compile(r"^\s*(?:cpp_fused_\w+\(|\w*triton_\w+\.run\()", re.MULTILINE)
_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def _is_top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:  # profiler scopes (compiled regions, record_function) do not count
        if _OPERATION.match(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def top_level_ops(fn: Callable[[], object]) -> Counter:
    """Names of the operations ``fn`` calls directly from Python, with their counts."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if _OPERATION.match(e.name) and _is_top_level(e))


def gpu_launches(fn: Callable[[], object]) -> int:
    """Kernel launches (and CUDA graph launches) ``fn`` makes on a GPU."""
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.name in _LAUNCHES)


def capture_output_code(fn: Callable[[], object]) -> list[str]:
    """The output code of every graph inductor compiles (or loads from its cache) while ``fn`` runs."""
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    with mock.patch.object(GraphLowering, "save_output_code", codes.append):
        fn()
    return codes


def generated_kernel_calls(codes: list[str]) -> int:
    """Generated kernels called per run of the compiled graphs whose ``codes`` are given."""
    total = 0
    for code in codes:
        body = code[code.find("def call("):] if "def call(" in code else code
        total += len(_KERNEL_CALL.findall(body))
    return total


def count(name: str, size: int) -> dict:
    model = build_model(name).eval()
    a, b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)
    both = torch.cat([a, b])
    with torch.inference_mode():
        model(a, b)  # warm: tables kept per input size are not counted
        whole = top_level_ops(lambda: model(a, b))
        backbone = top_level_ops(lambda: model.backbone(both))  # both dates, as the forward runs them
    head = whole - backbone
    return {"model": name, "size": size, "top_level_ops": sum(whole.values()),
            "backbone_ops": sum(backbone.values()),
            "head_ops": sum(whole.values()) - sum(backbone.values()),
            "most_common_in_head": head.most_common(6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dsqnet_swin_t", "dsqnet_vitae_s"])
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.models:
        print(json.dumps(count(name, args.size)), flush=True)


if __name__ == "__main__":
    main()
