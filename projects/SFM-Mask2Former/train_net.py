#!/usr/bin/env python3
"""Train or evaluate SFM-Mask2Former with detectron2 (the code lives in ``sfm_d2.engine``).

python train_net.py --config-file configs/finedetail/sfm_maskformer2_swin_micro.yaml
python train_net.py --help   # detectron2's flags; trailing KEY VALUE pairs override the config
"""

import sfm_d2  # noqa: F401  (first: its compatibility layer must run before detectron2 loads)
from sfm_d2.engine import default_argument_parser, run

if __name__ == "__main__":
    run(default_argument_parser().parse_args())
