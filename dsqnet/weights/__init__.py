"""Model files: our safetensors format (``model_file``), the authors' open-cd checkpoints
(``opencd``), ImageNet backbone weights (``imagenet``), and safe reading of foreign files (``files``)."""
