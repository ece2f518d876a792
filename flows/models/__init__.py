"""Which model a run uses: the versioned registry and the resolution of a name, path or alias to a file."""
