"""What the study trains: its arms (config overrides of one baseline) and its budgets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

TOUCH_POINTS = (
    "WARPED_POSITIONAL_ENCODING",
    "NONUNIFORM_UPSAMPLE",
    "LPRM",
    "WARPED_MASK_ATTENTION",
)


def _touch_points(on: bool) -> tuple[str, ...]:
    return tuple(item for key in TOUCH_POINTS for item in (f"MODEL.SFM.MASK2FORMER.{key}", str(on)))


@dataclass(frozen=True)
class Arm:
    """One way to continue a baseline checkpoint: which config (``"baseline"`` or ``"sfm"``, the
    study's two configs, that differ only in ``MODEL.SFM``) and its overrides."""

    key: str  # short name used in folders and JSON
    label: str  # what the report calls it
    config: str
    opts: tuple[str, ...] = ()


BASELINE = Arm("B", "baseline (plain Mask2Former)", "baseline")
ARMS = (
    BASELINE,
    Arm("S", "full SFM", "sfm"),
    Arm("ARS", "ARS only", "sfm", _touch_points(False)),
    Arm("HEAD", "head touch points only", "sfm", ("MODEL.SFM.ARS_STAGES", "[]")),
    Arm(
        "BLUR",
        "BlurPool-style low-pass",
        "baseline",
        ("MODEL.SFM.LOWPASS_STAGES", "['res3', 'res4', 'res5']"),
    ),
)


@dataclass(frozen=True)
class Plan:
    """Budgets and data of one study run (every size is an option of ``tools/study.py``).

    The default is sized for 45 minutes on 2 quiet CPU cores: 2 pretrainings of 400 iterations,
    then 2 x 3 x 5 = 30 continuations of 120, two at a time, one core each. Estimate (from the
    demo's measured ~0.75 s per batch-8 iteration on one core, ~25 s per run for start-up,
    evaluation and analysis): ~5 min of pretraining and ~35 min of continuations. The report
    states the time it took.
    """

    base_seeds: tuple[int, ...] = (0, 1)
    continuation_seeds: tuple[int, ...] = (100, 101, 102)
    pretrain_iters: int = 400
    continue_iters: int = 120
    batch_size: int = 8
    train_dataset: str = "sfm_finedetail_quarter_train"
    test_dataset: str = "sfm_finedetail_quarter_val"
    arms: tuple[Arm, ...] = ARMS
    parallel: int = 2  # training processes at once (each single-threaded)
    replicates: int = 2000  # bootstrap replicates
    extra_opts: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("base_seeds", "continuation_seeds"):
            seeds = getattr(self, name)
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"{name} must be distinct seeds, at least one, got {seeds!r}")
        for name in ("pretrain_iters", "continue_iters", "batch_size", "parallel", "replicates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.arms or self.arms[0].key != BASELINE.key:
            raise ValueError("arms must start with the baseline arm 'B' (differences are vs it)")

    def common_opts(self) -> tuple[str, ...]:
        """Overrides every run gets: data, batch, no periodic checkpoints, CPU."""
        return (
            "DATASETS.TRAIN",
            f"('{self.train_dataset}',)",
            "DATASETS.TEST",
            f"('{self.test_dataset}',)",
            "SOLVER.IMS_PER_BATCH",
            str(self.batch_size),
            "SOLVER.CHECKPOINT_PERIOD",
            "100000",
            "MODEL.DEVICE",
            "cpu",
            *self.extra_opts,
        )


# 2 pretrainings and 2 x 1 x 5 continuations: 12 runs, two at a time (6.5 min measured at load
# average ~6, mostly process start-up).
QUICK = Plan(
    base_seeds=(0, 1),
    continuation_seeds=(100,),
    pretrain_iters=20,
    continue_iters=10,
    train_dataset="sfm_finedetail_quarter_quick_train",
    test_dataset="sfm_finedetail_quarter_quick_val",
    replicates=500,
)


def quick_plan(**changes: object) -> Plan:
    """The ``--quick`` plan (a smoke run of a few minutes), with ``changes``."""
    return replace(QUICK, **changes)  # type: ignore[arg-type]
