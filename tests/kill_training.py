"""Run one training call in a subprocess that SIGKILLs itself at a given optimiser step.

A worker killed mid-training runs no cleanup: no ``finally``, no MLflow run marked failed. Tests use
:func:`run_killed` and then check what a retry makes of what was left (checkpoints, an unfinished run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_killed(step: int, spec: dict[str, Any], spec_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``spec`` (``{"call": "fine_tune" | "train_candidate", ...}``) killed at ``step``; returns the process."""
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, __file__, str(step), str(spec_path)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _main(step: int, spec: dict[str, Any]) -> None:
    import torch

    import ftops.training.hf as training
    from ftops.core.config import FtopsConfig, HuggingFaceBackend
    from ftops.pipeline import finetune as stages

    torch.set_num_threads(1)
    make = training._make_trainer_class

    def killing_trainer() -> type:
        class Killed(make()):  # type: ignore[misc]
            def training_step(self, *args: Any, **kwargs: Any) -> Any:
                if self.state.global_step == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().training_step(*args, **kwargs)

        return Killed

    training._make_trainer_class = killing_trainer
    if spec["call"] == "fine_tune":
        training.fine_tune(spec["base"], spec["rows"], Path(spec["out"]), HuggingFaceBackend(**spec["params"]),
                           checkpoint_dir=Path(spec["checkpoints"]))  # fmt: skip
    else:
        cfg = FtopsConfig.model_validate(spec["cfg"])
        stages.train_candidate(cfg, spec["task_type"], None, run_key=spec["run_key"])


if __name__ == "__main__":
    _main(int(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
