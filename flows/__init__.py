"""Prefect flows, tiling, publishing and the ``dsqnet`` command line: where the model meets geography."""
