"""A batch that does not fit in memory is told in one line: what did not fit, and the settings that
make it fit.

On a card with less memory than the default batch needs, or one that other processes share, torch
raises ``OutOfMemoryError`` with a paragraph about its allocator; on a CPU a block too large for
the machine fails in numpy or torch with the size it could not allocate. Either is a problem the
user fixes with a parameter, so it is a user error (flows/runtime/user_errors.py), never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from flows.runtime.user_errors import UserError


class OutOfMemory(UserError):
    """A batch or block did not fit in the memory of its device; the message names the settings to lower."""


_CPU_ALLOCATOR = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_NUMPY = re.compile(r"Unable to allocate [\d.]+ \w+")


def is_out_of_memory(err: BaseException) -> bool:
    """A card's ``OutOfMemoryError``, numpy's ``MemoryError``, or torch's CPU allocator's RuntimeError."""
    return (isinstance(err, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(err, RuntimeError) and _CPU_ALLOCATOR.search(str(err)) is not None))


@contextmanager
def said_in_one_line(line: Callable[[BaseException], OutOfMemory]) -> Iterator[None]:
    """Inside, running out of memory raises ``line(err)`` instead (``out_of_memory``,
    ``training_out_of_memory``): the settings that make it fit. Any other error passes as it is."""
    try:
        yield
    except Exception as err:
        if is_out_of_memory(err):
            raise line(err) from None
        raise


def _figures(err: BaseException, on_gpu: bool) -> str:
    """What could not be allocated, in the library's words: for a card, torch's first sentences
    (what it tried to allocate, the card's capacity and what was free), not its allocator advice."""
    text = str(err)
    if on_gpu:
        return ". ".join(part for part in text.split(". ")[1:3] if part).rstrip(".")
    if found := _CPU_ALLOCATOR.search(text):
        return f"tried to allocate {int(found.group(1)) / 2**30:.2f} GiB"
    found = _NUMPY.search(text)
    return found.group(0) if found else ""


def out_of_memory(err: BaseException, what: str, device: str, batch_size: int, window: int, precision: str,
                  block_size: int | None = None, batch_option: str = "batch_size") -> OutOfMemory:
    """The one line for ``what`` (``block-0-1``, ``the pair``) whose windows ran out of memory on ``device``;
    ``batch_option`` is the parameter that sets the windows per batch (its option is the same in kebab-case)."""
    settings = f"batches of {batch_size} windows of {window} px in {precision}"
    flag = "--" + batch_option.replace("_", "-")
    fixes = [f"lower {flag} (parameter '{batch_option}', now {batch_size})"]
    if _on_the_card(err, device):
        if precision == "fp32":
            fixes.append("use --precision bf16 or fp16 (parameter 'precision')")
    elif block_size is not None:
        settings = f"a block of {block_size} px, {settings}"
        fixes.insert(0, f"lower --block-size (parameter 'block_size', now {block_size})")
    return out_of_memory_line(err, what, device, settings, fixes)


def training_out_of_memory(err: BaseException, device: str, batch_size: int, accumulate: int, precision: str,
                           batch_option: str, accumulate_option: str) -> OutOfMemory:
    """The one line for a training step that ran out of memory: more micro-batches keep the step's
    crops. The options are where the user sets each value, with ``{now}`` for the value now."""
    at_once = max(1, batch_size // accumulate)
    fixes = [f"raise {accumulate_option.format(now=accumulate)} to pass the step's {batch_size} crops fewer at a time",
             f"lower {batch_option.format(now=batch_size)}"]
    return out_of_memory_line(err, "training", device, f"{at_once} crops at once in {precision}", fixes)


def out_of_memory_line(err: BaseException, what: str, device: str, settings: str, fixes: list[str]) -> OutOfMemory:
    """``what ran out of memory on device (figures) with settings: fix, fix, or the machine's own fix``."""
    card = _on_the_card(err, device)
    figures = _figures(err, card)
    said = f" ({figures})" if figures else ""
    fixes = [*fixes, "or free the card of other processes" if card else "or close other programs"]
    on_cpu = torch.device(device).type == "cpu"
    memory = f"GPU memory on {device}" if card else "memory on cpu" if on_cpu else "host memory"
    return OutOfMemory(f"{what} ran out of {memory}{said} with {settings}: {', '.join(fixes)}")


def _on_the_card(err: BaseException, device: str) -> bool:
    """Whether the card's memory ran out, not the machine's: numpy and torch's CPU allocator fail on
    a GPU host too (a block's pixels, its sums)."""
    return isinstance(err, torch.OutOfMemoryError) and torch.device(device).type == "cuda"
