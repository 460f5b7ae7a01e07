"""Inference engine: scheduling, sampling and streaming output for one loaded model."""
