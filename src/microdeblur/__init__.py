"""microdeblur: deblur bright-field microscopy images by swapping a disentangled blur code."""

__version__ = "0.1.0"
