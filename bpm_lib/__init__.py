"""bpm-eval: the BPM metric for instruction-based image editing."""
__version__ = "0.1.0"
