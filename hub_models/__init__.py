"""Video Swin Transformer for TensorFlow: model, variant registry, checkpoint conversion."""
