"""SFM core: Spatial Frequency Modulation (ARS + MSAU) for semantic segmentation, in PyTorch."""

__version__ = "0.1.0"
