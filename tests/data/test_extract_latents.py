import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import corrupt_files
from PIL import Image

import gladiff.data.extract as extract_mod
from gladiff.cli import main as gladiff_main
from gladiff.data import ImageFolderDataset, LatentDataset, UnreadableImageWarning, center_crop_arr
from gladiff.data.extract import extract_latents
from gladiff.data.vae import load_vae

REPO = Path(__file__).resolve().parents[2]


def read_shards(out) -> dict[str, np.ndarray]:
    m = json.loads((out / "manifest.json").read_text())
    return {a: np.concatenate([np.load(out / s["name"] / f"{a}.npy") for s in m["shards"]])
            for a in ("mean", "std", "labels", "index")}


def test_extract_stores_posterior_of_centre_crops_and_flips(tiny_folder, small_vae_dir, tmp_path):
    out = tmp_path / "latents"
    rc = gladiff_main(["extract-latents", "--data", f"imagefolder:{tiny_folder}", "--out", str(out),
                  "--image-size", "32", "--vae", str(small_vae_dir), "--flip", "--batch-size", "3",
                  "--shard-size", "4", "--dtype", "float32", "--device", "cpu", "--workers", "1",
                  "--no-progress"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["flip"] and m["image_size"] == 32 and m["scale"] == 0.18215
    assert m["latent_shape"] == [4, 4, 4] and m["classes"] == ["ant", "cat", "dog"]
    assert m["vae"] == str(small_vae_dir.resolve()) and m["posterior"] == "mean_std"
    assert [s["count"] for s in m["shards"]] == [4, 4, 3] and m["num_latents"] == 11
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard_00000", "shard_00001",
                                                      "shard_00002"]
    got = read_shards(out)
    assert got["mean"].shape == (11, 2, 4, 4, 4) and got["mean"].dtype == np.float32
    np.testing.assert_array_equal(got["index"], np.arange(11))
    folder = ImageFolderDataset(tiny_folder, 32, random_flip=False)
    np.testing.assert_array_equal(got["labels"], folder.labels)
    # Independent encoding, one image at a time, straight through diffusers.
    vae = load_vae(small_vae_dir)
    for i in range(11):
        arr = center_crop_arr(Image.open(folder.path(i)).convert("RGB"), 32)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            post = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist
        np.testing.assert_allclose(got["mean"][i], post.mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["std"][i], post.std.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["mean"][:, 0], got["mean"][:, 1])  # the mirror is a different image


# Run in a child process: kill -9 itself in the middle of writing the second shard (after two of
# its four arrays), i.e. no exception handler, finally block or atexit gets to run.
KILLED_RUN = """
import os, signal, sys
import numpy as np
import torch
import gladiff.data.extract as ex
torch.set_num_threads(1)
real_save, saves = np.save, []
def save_then_die(*a, **k):
    saves.append(1)
    if len(saves) == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(*a, **k)
ex.np.save = save_then_die
ex.extract_latents(sys.argv[1], sys.argv[2], image_size=32, vae=sys.argv[3], flip=True,
                   batch_size=3, shard_size=4, dtype="float16", device="cpu", progress=False)
"""


def test_resume_after_kill_gives_identical_result(tiny_folder, small_vae_dir, tmp_path,
                                                  monkeypatch):
    kw = dict(image_size=32, vae=small_vae_dir, flip=True, batch_size=3, shard_size=4,
              dtype="float16", device="cpu", progress=False)
    ref = extract_latents(tiny_folder, tmp_path / "straight", **kw)

    out = tmp_path / "resumed"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tiny_folder), str(out),
                            str(small_vae_dir)], env=env, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers[:2] == ["manifest.json", "shard_00000"] and len(leftovers) == 3
    assert leftovers[2].startswith("shard_00001.tmp-")  # the half-written shard, never renamed
    with pytest.raises(ValueError, match="incomplete"):
        LatentDataset(out)

    # The re-run encodes only what is missing and removes the temp folder.
    encoded = []
    real_encode = extract_mod.encode_posterior
    monkeypatch.setattr(extract_mod, "encode_posterior",
                        lambda vae, x: encoded.append(len(x)) or real_encode(vae, x))
    m = extract_latents(tiny_folder, out, **kw)
    assert sum(encoded) == 2 * (11 - 4)  # shards 1 and 2 only, each image and its mirror
    assert m == dict(ref, source=m["source"]) and m["complete"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "straight").iterdir())
    a, b = read_shards(tmp_path / "straight"), read_shards(out)
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name])

    # A finished extraction re-run is a no-op; other settings in the same folder are refused.
    encoded.clear()
    extract_latents(tiny_folder, out, **kw)
    assert encoded == []
    with pytest.raises(ValueError, match="different settings.*flip"):
        extract_latents(tiny_folder, out, **dict(kw, flip=False))


def test_two_ranks_split_the_shards(tiny_folder, small_vae_dir, tmp_path):
    kw = dict(image_size=32, vae=small_vae_dir, batch_size=4, shard_size=3, dtype="float32",
              device="cpu", progress=False)
    single = extract_latents(tiny_folder, tmp_path / "one", **kw)
    first = extract_latents(tiny_folder, tmp_path / "two", rank=1, world_size=2, **kw)
    assert not first["complete"]
    assert sorted(p.name for p in (tmp_path / "two").glob("shard_*")) == ["shard_00001", "shard_00003"]
    last = extract_latents(tiny_folder, tmp_path / "two", rank=0, world_size=2, **kw)
    assert last["shards"] == single["shards"]
    a, b = read_shards(tmp_path / "one"), read_shards(tmp_path / "two")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_corrupt_files_skipped_in_extraction(tiny_folder, small_vae_dir, tmp_path):
    corrupt_files(tiny_folder / "ant")  # sorted last in "ant": files 3 and 4 of 13
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = extract_latents(tiny_folder, tmp_path / "out", image_size=32, vae=small_vae_dir,
                            shard_size=4, batch_size=8, device="cpu", progress=False)
    assert len([w for w in caught if issubclass(w.category, UnreadableImageWarning)]) == 1
    assert m["num_files"] == 13 and m["num_skipped"] == 2 and m["num_latents"] == 11
    assert [(s["count"], s["skipped"]) for s in m["shards"]] == [(3, 1), (3, 1), (4, 0), (1, 0)]
    idx = read_shards(tmp_path / "out")["index"]
    np.testing.assert_array_equal(idx, [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12])


def test_extract_errors(tiny_folder, small_vae_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="not divisible"):
        extract_latents(tiny_folder, tmp_path / "o", image_size=36, vae=small_vae_dir, device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        extract_latents(tiny_folder, tmp_path / "o", vae=small_vae_dir, dtype="int8")
    with pytest.raises(ValueError, match="does not exist"):
        extract_latents(tmp_path / "nothing", tmp_path / "o", vae=small_vae_dir)
    with pytest.raises(ValueError, match="inside the image folder"):
        extract_latents(tiny_folder, tiny_folder / "latents", vae=small_vae_dir)
    assert gladiff_main(["extract-latents", "--data", "digits", "--out", str(tmp_path / "o")]) == 2
    assert "--data must be imagefolder:PATH" in capsys.readouterr().err
    # refused before anything is written (the DataLoader would refuse after the manifest exists)
    assert gladiff_main(["extract-latents", "--data", str(tiny_folder), "--out", str(tmp_path / "w"),
                         "--vae", str(small_vae_dir), "--workers", "-1", "--device", "cpu"]) == 2
    assert not (tmp_path / "w").exists()  # no manifest, no folder
    assert "--workers must be >= 0, got -1" in capsys.readouterr().err


def test_a_failed_shard_or_manifest_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from gladiff.data import latents

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # The disk fills once the temporary files exist (the flush to disk fails): both must go.
    monkeypatch.setattr(os, "fsync", full_disk)
    arrays = {a: np.zeros(1) for a in latents.ARRAYS}
    with pytest.raises(OSError, match="No space"):
        latents.write_shard(tmp_path, 0, arrays)
    with pytest.raises(OSError, match="No space"):
        latents.write_json_atomic(tmp_path / latents.MANIFEST, {"complete": False})
    assert list(tmp_path.iterdir()) == []
