"""Run ``train`` with a deterministic objective in its own process(es), for the multi-process test.

    python tests/train/run_standin.py '{"run_dir": ..., "steps": ...}' [tiny|dig]
    python -m torch.distributed.run --nproc_per_node=2 tests/train/run_standin.py '{...}' dig
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

from gladiff.train import TrainConfig, train  # noqa: E402
from gladiff.train.build import build_model  # noqa: E402
from tests.train.standins import NoNoise, TinyDigits, tiny_builder  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    builder = {"tiny": tiny_builder, "dig": build_model}[sys.argv[2] if len(sys.argv) > 2 else "tiny"]
    res = train(cfg, dataset=TinyDigits(64), objective=NoNoise(), model_builder=builder, progress=False)
    print(json.dumps({"step": res.step, "stopped_by": res.stopped_by, "checkpoint": str(res.checkpoint)}))
