"""How the flows run here: Prefect settings for an offline machine, and flows inside flows."""
