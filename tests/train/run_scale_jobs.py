"""Run several jobs one after the other in the same processes, for the scale-out tests:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/train/run_scale_jobs.py JOBS.json

``JOBS.json`` is a list of ``{"train": {TrainConfig keys}}`` (the real DiG through ``train`` with the
deterministic ``NoNoise`` objective, or ``TinyEps`` with ``"objective": "tiny_eps"``, which can
sample) and ``{"load": {"checkpoint": PATH, "out": PREFIX}}`` (every
rank loads the EMA with ``gladiff.sample.load_trained`` and saves its state dict to
``PREFIX-rank<r>.pt``). One launch amortises the interpreter and torch start-up over all jobs.
A train job whose config sets ``compile`` compiles with ``CountingBackend`` (AOT autograd, eager
kernels) and writes the number of graphs each rank compiled to ``RUN_DIR/graphs-rank<r>.txt``.

The process group is joined once and left at the end: ``train`` leaves it after every run, and
joining the default group again in the same processes can pass on one rank with the previous
group's rendezvous keys while the other still waits (a hang), so leaving is deferred here.
"""
import faulthandler
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

from gladiff.train import TrainConfig, parallel, train  # noqa: E402
from gladiff.train.build import build_model  # noqa: E402
from tests.train.standins import CountingBackend, NoNoise, TinyDigits, TinyEps  # noqa: E402

if __name__ == "__main__":
    # A rank that aborts in C++ (seen once: "terminate called without an active exception" in the second
    # launch of test_scale_out.py, not reproduced) prints every thread's Python stack to stderr, which
    # the test's failure message shows.
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    dist = parallel.init_distributed("cpu")
    leave = parallel.shutdown
    parallel.shutdown = lambda d, wait=True: parallel.barrier(d) if wait else None
    for job in json.loads(Path(sys.argv[1]).read_text()):
        if "train" in job:
            objective = TinyEps() if job.get("objective") == "tiny_eps" else NoNoise()
            compiled = job["train"].get("compile", "none") != "none"
            if compiled:
                torch._dynamo.reset()
                parallel.COMPILE_BACKEND = backend = CountingBackend()
            train(TrainConfig(**job["train"]), dataset=TinyDigits(64), objective=objective,
                  model_builder=build_model, progress=False)
            if compiled:
                Path(job["train"]["run_dir"], f"graphs-rank{dist.rank}.txt").write_text(str(backend.graphs))
        else:
            from gladiff.sample import load_trained

            trained = load_trained(job["load"]["checkpoint"])
            torch.save(trained.model.state_dict(), f"{job['load']['out']}-rank{dist.rank}.pt")
    leave(dist)
