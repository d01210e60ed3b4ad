"""Run ``train`` on the stand-ins in its own process (for the signal and multi-process tests).

    python tests/train/run_standin.py '{"run_dir": ..., "steps": ...}' [tiny_eps|no_noise]
    python -m torch.distributed.run --nproc_per_node=2 tests/train/run_standin.py '{...}' no_noise
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

from gladiff.train import TrainConfig, train  # noqa: E402
from tests.train.standins import NoNoise, TinyDigits, TinyEps, tiny_builder  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    objective = {"tiny_eps": TinyEps, "no_noise": NoNoise}[sys.argv[2] if len(sys.argv) > 2 else "tiny_eps"]()
    res = train(cfg, dataset=TinyDigits(64), objective=objective, model_builder=tiny_builder, progress=False)
    print(json.dumps({"step": res.step, "stopped_by": res.stopped_by, "checkpoint": str(res.checkpoint)}))
