"""The flows as ``prefect.yaml`` names them.

Prefect loads an entrypoint file as a loose script; flows imported here from the package keep their
package module names, so Dask workers can unpickle their tasks (``flows.detect...``) by import.
"""

from flows.detect import detect_changes
from flows.evaluate import evaluate_model_flow
from flows.monitor import monitor_region
from flows.retrain import retrain_model

__all__ = ["detect_changes", "evaluate_model_flow", "monitor_region", "retrain_model"]
