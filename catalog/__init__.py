"""Finding scenes and putting them on one grid. Free of the model: never imports torch or dsqnet."""
