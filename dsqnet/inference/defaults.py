"""The inference settings every job starts from, defined here once: the paper's 512-pixel windows
at stride 256, a few windows per forward pass, and the threshold of "changed"."""

from dsqnet.inference.threshold import DEFAULT_THRESHOLD

WINDOW = 512
STRIDE = 256
BATCH_SIZE = 4

__all__ = ["BATCH_SIZE", "DEFAULT_THRESHOLD", "STRIDE", "WINDOW"]
