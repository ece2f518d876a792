"""Scoring models: pixel and object metrics against labels, and the labeled data they are scored on."""
