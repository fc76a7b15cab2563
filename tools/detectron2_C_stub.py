"""Stand-in for ``detectron2._C`` in the Python-only wheel built by build_detectron2_wheel.sh.

The ``pb1-detectron2`` sdist lacks the C++/CUDA sources, so the compiled extension cannot be
built from a package registry. Semantic segmentation never needs it; everything that does
(rotated boxes, ROIAlignRotated, nms_rotated, the fast COCO evaluator) fails here with a message
that says what is missing and why, instead of an obscure import error deep inside detectron2.
"""

_MISSING = (
    "detectron2._C.{name} is unavailable: this detectron2 is the Python-only wheel built by "
    "tools/build_detectron2_wheel.sh, without its C++ extension (the pb1-detectron2 sdist ships no "
    "C++ sources). Semantic segmentation does not need it; rotated boxes, ROIAlignRotated, "
    "nms_rotated and COCOEvaluator(use_fast_impl=True) do. Install detectron2 from its source "
    "repository to get them."
)


def get_compiler_version() -> str:
    """What detectron2.utils.collect_env reports for the extension's compiler."""
    return "not built (Python-only detectron2 wheel, stub _C)"


def get_cuda_version() -> str:
    """What detectron2.utils.collect_env reports for the extension's CUDA version."""
    return "not available"


def has_cuda() -> bool:
    """The stub has no CUDA kernels."""
    return False


def __getattr__(name: str) -> object:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise AttributeError(_MISSING.format(name=name))
