"""detectron2 modeling components of SFM; importing this registers them."""

from sfm_d2.modeling import backbone, mask2former  # registers the backbones and Mask2Former parts

__all__ = ["backbone", "mask2former"]
