"""The parameters of each flow, checked before any work starts, and the embedded demo's defaults."""
