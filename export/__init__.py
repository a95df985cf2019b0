"""Command-line tools that turn official checkpoints into TF Hub models."""
