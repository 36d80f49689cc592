"""medfed: federated learning for multi-hospital medical research.

Importing any part of medfed first switches Prefect and MLflow to offline
defaults (no telemetry, no analytics, state under the medfed home folder), so
that nothing phones home and nothing waits on a network that is not there.
"""

from medfed.settings import apply_offline_defaults

__version__ = "0.1.0"

apply_offline_defaults()
