"""Sample files and the sampling pipeline: formats round-trip, grids, seeds, processes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gladiff.sample import (class_labels, generate, load_trained, make_grid, read_npz, sample_images,
                            save_grid, to_uint8, write_npz, write_outputs)
from gladiff.sample.generate import my_batches
from gladiff.train import parallel
from tests.processes import run_to_end
from tests.train.standins import TinyEps

ROOT = Path(__file__).resolve().parents[2]


def test_to_uint8_inverts_the_data_scaling_exactly():
    levels = torch.arange(256, dtype=torch.float32)
    x = (levels / 127.5 - 1.0).reshape(1, 1, 16, 16)  # how the data pipeline maps pixels to [-1, 1]
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 16, 16, 1)
    assert np.array_equal(out.reshape(-1), np.arange(256))
    assert to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 2, 1, 1)).reshape(-1).tolist() == [0, 255]


def test_npz_round_trips_in_the_adm_format(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, 7)
    path = write_npz(tmp_path / "s.npz", images, labels)
    with np.load(path) as f:  # what ADM's evaluator reads
        assert sorted(f.files) == ["arr_0", "arr_1"]
        assert f["arr_0"].dtype == np.uint8 and f["arr_1"].dtype == np.int64
    got_images, got_labels = read_npz(path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    with pytest.raises(ValueError, match="uint8"):
        write_npz(tmp_path / "bad.npz", images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="labels"):
        write_npz(tmp_path / "bad.npz", images, labels[:3])
    with pytest.raises(ValueError, match=".npz"):
        write_npz(tmp_path / "bad.png", images, labels)


def test_grid_places_image_i_at_row_i_div_nrow(tmp_path):
    images = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(1, 6)])
    grid = make_grid(images, nrow=2, pad=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    for i in range(5):
        r, c = divmod(i, 2)
        assert (grid[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3] == i + 1).all()
    assert grid[-3:-1, 5:8].max() == 0  # the missing sixth cell stays padding
    from PIL import Image
    saved = np.asarray(Image.open(save_grid(tmp_path / "g.png", images, nrow=2, scale=2)))
    assert saved.shape == ((3 * 4 + 2) * 2, (2 * 5 + 2) * 2)  # default padding 2, enlarged twice


def test_save_grid_picks_the_format_from_the_suffix(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    png, jpg = save_grid(tmp_path / "g.png", images), save_grid(tmp_path / "g.jpg", images)
    with Image.open(png) as a, Image.open(jpg) as b:
        assert (a.format, b.format) == ("PNG", "JPEG")
        assert np.array_equal(np.asarray(a), make_grid(images))  # PNG is lossless
        assert np.abs(np.asarray(b).astype(int) - make_grid(images)).mean() < 40  # JPEG: close, not exact


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """The rename onto a folder of the output's name fails after the temporary file was written."""
    images, labels = np.zeros((2, 4, 4, 3), np.uint8), np.arange(2)
    (tmp_path / "s.npz").mkdir()
    (tmp_path / "g.png").mkdir()
    with pytest.raises(OSError):
        write_npz(tmp_path / "s.npz", images, labels)
    with pytest.raises(OSError):
        save_grid(tmp_path / "g.png", images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "s.npz"]


def test_class_labels():
    assert class_labels(7, 10, classes=[3, 1]).tolist() == [3, 1, 3, 1, 3, 1, 3]
    r = class_labels(1000, 10, seed=4)
    assert torch.equal(r, class_labels(1000, 10, seed=4)) and set(r.tolist()) == set(range(10))
    with pytest.raises(ValueError, match=r"classes \[10\] are outside"):
        class_labels(3, 10, classes=[10])


def test_batches_are_dealt_round_robin_and_cover_every_index():
    d = [parallel.Dist(rank=r, world_size=3) for r in range(3)]
    got = [my_batches(10, 3, x) for x in d]
    assert got[0] == [(0, 0, 3), (3, 9, 10)] and got[1] == [(1, 3, 6)] and got[2] == [(2, 6, 9)]


def test_samples_depend_on_seed_not_on_how_batches_are_shared(trained_ckpt):
    tr = load_trained(trained_ckpt)
    labels = class_labels(10, 10, classes=range(10))
    full_idx, full = generate(tr.model, tr.objective, labels, tr.sample_shape, seed=3, batch_size=4,
                              progress=False)
    assert full.shape == (10, 8, 8, 1) and full_idx.tolist() == list(range(10))
    # what rank 1 of 2 computes is exactly its part of the single-process result
    idx1, part1 = generate(tr.model, tr.objective, labels, tr.sample_shape, seed=3, batch_size=4,
                           dist=parallel.Dist(rank=1, world_size=2), progress=False)
    assert idx1.tolist() == [4, 5, 6, 7] and np.array_equal(part1, full[4:8])
    _, other = generate(tr.model, tr.objective, labels, tr.sample_shape, seed=4, batch_size=4, progress=False)
    assert not np.array_equal(other, full)


def test_load_trained_uses_ema_unless_raw_weights(trained_ckpt):
    state = torch.load(trained_ckpt, weights_only=True)
    ema, raw = load_trained(trained_ckpt), load_trained(trained_ckpt, use_ema=False)
    assert torch.equal(ema.model.inp.weight, state["ema"]["inp.weight"])
    assert torch.equal(raw.model.inp.weight, state["model"]["inp.weight"])
    assert not torch.equal(ema.model.inp.weight, raw.model.inp.weight)
    assert not ema.model.training and ema.sample_shape == (1, 8, 8) and ema.step == 3


def test_one_and_two_processes_write_the_same_npz(trained_ckpt, tmp_path):
    tr = load_trained(trained_ckpt)
    images, labels = sample_images(tr, class_labels(10, 10, classes=range(10)), seed=11, batch_size=3,
                                   progress=False)
    write_outputs([tmp_path / "one.npz", tmp_path / "one.png"], images, labels)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      str(Path(__file__).with_name("run_sampling.py")), str(trained_ckpt),
                      str(tmp_path / "two.npz"), "10", "3"], env=env, cwd=ROOT, what="sampling in 2 processes")
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = read_npz(tmp_path / "one.npz"), read_npz(tmp_path / "two.npz")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not list(tmp_path.glob(".sample-shares-*"))  # shares cleaned up
    assert (tmp_path / "one.png").stat().st_size > 0


def test_execution_modes_are_checked_and_eager_is_the_model_itself(trained_ckpt):
    from gladiff.sample import EXECUTIONS, GraphedModel, for_sampling

    tr = load_trained(trained_ckpt)
    assert for_sampling(tr.model, "eager") is tr.model
    assert set(EXECUTIONS) == {"eager", "compile", "graph", "compile+graph"}
    with pytest.raises(ValueError, match="unknown execution"):
        for_sampling(tr.model, "fast")
    for mode in ("graph", "compile+graph"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            for_sampling(tr.model, mode, "cpu")
    graphed = GraphedModel(tr.model)
    assert graphed.in_channels == tr.model.in_channels  # the wrapped model's attributes show through
    with pytest.raises(ValueError, match="CUDA tensors"):
        graphed(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="warmup"):
        GraphedModel(tr.model, warmup=0)


def test_compiled_sampling_draws_the_eager_samples(compile_backend):
    """``execution="compile"`` with either compile scope: the eager images (AOT autograd with eager
    kernels on the CPU), graphs really compiled, and the model's blocks eager again afterwards."""
    from gladiff.models import create_model
    from gladiff.sample import Trained, for_sampling

    torch.manual_seed(0)
    model = create_model("DiG-S/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False, depth=2,
                         hidden_size=32, num_heads=1).eval().requires_grad_(False)
    info = {"sample_size": 8, "in_channels": 1, "num_classes": 10}
    tr = Trained(model=model, objective=TinyEps(), spec={}, info=info, config={}, step=0, path=Path("-"))
    labels = class_labels(6, 10, classes=range(6))
    eager, _ = sample_images(tr, labels, seed=2, batch_size=3, progress=False)
    graphs = {}
    for scope in ("model", "blocks"):
        before = compile_backend.graphs
        images, got = sample_images(tr, labels, seed=2, batch_size=3, progress=False, execution="compile",
                                    compile_scope=scope)
        graphs[scope] = compile_backend.graphs - before
        assert np.array_equal(images, eager) and np.array_equal(got, labels.numpy()), scope
    # the whole network in one graph; one graph per distinct block (two scan orientations)
    assert graphs == {"model": 1, "blocks": 2}
    assert all(block._compiled_call_impl is None for block in model.blocks)  # in-place compile undone
    with pytest.raises(ValueError, match="unknown compile scope"):
        for_sampling(model, "compile", compile_scope="layers")
