"""The researcher's side: experiment configs, the central Prefect flow, strategies, tracking."""
