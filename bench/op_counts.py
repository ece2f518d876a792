"""How many operations does one DSQNet forward issue? A CPU proxy for its speed on a GPU.

On a fast GPU a forward of many small operations is bound by launching them, not by arithmetic,
so the count of top-level aten operations per forward (those called from Python, not from inside
another aten operation) tracks the network's GPU speed on any machine. Counted with
``torch.profiler`` on the CPU for the whole network and for its backbone passes alone; the head is
the difference (its most frequent operations are listed). Goal (issue #22): at most a third of the count measured when the goal was set
(about 1,430 per Swin-T forward at 512², about 500 of them in the head).

    python -m bench.op_counts                          # dsqnet_swin_t and dsqnet_vitae_s, one 512 x 512 pair
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from dsqnet.model import build_model


def top_level_ops(fn) -> Counter:
    """Names of the aten operations ``fn`` calls directly from Python, with their counts."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def count(name: str, size: int) -> dict:
    model = build_model(name).eval()
    a, b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model(a, b)  # warm: lazily built buffers are not counted
        whole = top_level_ops(lambda: model(a, b))
        backbone = top_level_ops(lambda: model.extract_features(a, b))  # both dates, as the forward runs them
    head = whole - backbone
    return {"model": name, "size": size, "top_level_aten_ops": sum(whole.values()),
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
