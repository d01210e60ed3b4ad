"""Sample a checkpoint of the stand-ins in its own process(es) (for the 1-vs-2 process test).

    python -m torch.distributed.run --nproc_per_node=2 tests/sample/run_sampling.py CKPT OUT.npz N BATCH
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

import gladiff.sample.load as load  # noqa: E402
from gladiff.sample import class_labels, sample_images, write_outputs  # noqa: E402
from gladiff.train import parallel  # noqa: E402
from tests.train.standins import TinyEps, tiny_builder  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    ckpt, out, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    load.build_model, load.build_objective = tiny_builder, lambda name, opts: TinyEps()
    dist = parallel.init_distributed("cpu")
    trained = load.load_trained(ckpt)
    result = sample_images(trained, class_labels(n, 10, classes=range(10)), seed=11, batch_size=batch,
                           dist=dist, share_dir=Path(out).parent, progress=False)
    if dist.is_main:
        write_outputs([out], *result)
    parallel.shutdown(dist)
