"""An output child's entry (``python -m flows.outputs.child FIELDS``, started by
``per_block.OutputProcesses``): its imports with Python's cycle collector off, then its blocks.

A child imports numpy, zarr, rasterio, scipy, shapely and pyarrow before its first block, and every
run starts at least one. During the imports the collector's passes walk every object made so far,
again and again, and find almost no garbage: with the collector off the imports took 0.82 CPU s
against 1.01, six starts each, alternated (bench/HISTORY.md, stop 31). Once they are done, what they made is
left out of later passes (flows/runtime/collector.py) and the collector is on again for the blocks,
whose own cycles it must still find.
"""

import gc

gc.disable()  # before every import below

import json
import sys

from flows.outputs.per_block import BlockOutputs, serve
from flows.runtime.collector import freeze_loaded_objects

freeze_loaded_objects()
gc.enable()


if __name__ == "__main__":
    fields = json.loads(sys.argv[1])
    serve(BlockOutputs(**{**fields, "shape": tuple(fields["shape"]), "transform": tuple(fields["transform"])}))
