"""detectron2 modeling components of SFM; importing this registers them."""

from sfm_d2.modeling import backbone

__all__ = ["backbone"]
