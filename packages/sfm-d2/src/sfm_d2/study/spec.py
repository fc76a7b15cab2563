"""A study run's spec (what to train, where) and the files a finished run leaves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULT = "study_run.json"
SCORES = "study_scores.npy"


@dataclass(frozen=True)
class JobSpec:
    name: str
    config: str
    opts: tuple[str, ...]
    output_dir: str
    analyse: bool

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({**self.__dict__, "opts": list(self.opts)}, indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        data = json.loads(path.read_text())
        return cls(**{**data, "opts": tuple(data["opts"])})
