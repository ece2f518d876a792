"""Prefect flows, tiling, publishing and the ``dsqnet`` command line: where the model meets geography.

Importing this package sets Prefect's settings for an offline, slow machine wherever the user has
not set them (flows/runtime/offline.py). Prefect reads its settings when it is first imported, and the
command line and the benchmarks import this package before Prefect.
"""

from flows.runtime.offline import apply_offline_defaults

apply_offline_defaults()
