"""Prefect flows, tiling, publishing and the ``dsqnet`` command line: where the model meets geography.

Importing this package sets Prefect's settings for an offline, slow machine wherever the user has
not set them (flows/runtime/offline.py). Prefect reads its settings when it is first imported, and the
command line and the benchmarks import this package before Prefect. It also makes Prefect log the
failures a user can fix as one line, without a traceback (flows/runtime/user_errors.py).
"""

from flows.runtime.offline import apply_offline_defaults
from flows.runtime.user_errors import install_one_line_user_errors

apply_offline_defaults()
install_one_line_user_errors()
