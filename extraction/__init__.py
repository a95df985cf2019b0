"""Pooled Video Swin features for many video files, on one machine or on Apache Beam runners."""
