"""Triton kernels for the SFM ops, plugged into sfm-core's backend dispatch as ``"triton"``."""

__version__ = "0.1.0"
