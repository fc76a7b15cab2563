"""SFM on detectron2: config keys, SFM backbones (registered on import) and a CPU launcher.

The compatibility layer runs first, before anything imports detectron2 (see :mod:`sfm_d2.compat`).
"""

from sfm_d2 import compat

compat.apply()

from sfm_d2.config import add_sfm_config, load_config, validate_sfm_config  # noqa: E402
from sfm_d2.modeling import backbone  # noqa: E402  (registers the backbones)

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "add_sfm_config",
    "backbone",
    "compat",
    "load_config",
    "validate_sfm_config",
]
