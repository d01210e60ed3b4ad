"""The FID Inception-v3: architecture matches the published weights' layout, loader, TF resize,
features; and every feature equals an independent implementation of the same network (torch-fidelity's)
loaded from the same random weights file."""
import importlib
import importlib.util
import re
import sys
import types

import numpy as np
import pytest
import torch

from gladiff.eval.inception import (ENV_VAR, WEIGHTS_FILE, InceptionV3, InceptionWeightsNotFound,
                                    extract_features, images_to_nchw, load_inception,
                                    load_state_dict_checked, resize_bilinear_tf1, resolve_weights_path)

# torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with its auxiliary
# head). The FID network has no auxiliary head (conv 768->128 1x1 + BN, conv 128->768 5x5 + BN,
# linear 768->1000) and 1008 classes.
TORCHVISION_PARAMS = 27_161_264
AUX_PARAMS = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
FID_PARAMS = TORCHVISION_PARAMS - AUX_PARAMS + 8 * 2048 + 8

# Shapes of a few tensors of the TF graph, by their names in pytorch-fid's file.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6d.branch1x1.conv.weight": (192, 768, 1, 1),  # TF mixed_6/conv: the sFID layer
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
KEY_PATTERN = re.compile(r"^(Conv2d_\w+|Mixed_\d[a-e]\.branch\w+)\.(conv\.weight|bn\.(weight|bias|running_mean|"
                         r"running_var|num_batches_tracked))$|^fc\.(weight|bias)$")


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    net = InceptionV3()
    for m in net.modules():
        # He-initialised convolutions keep activations O(1) through the 94 layers (PyTorch's
        # default init shrinks them to ~1e-8, which would make the feature checks vacuous).
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # Non-trivial batch-norm statistics, so a lost buffer would show in the round trip.
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    # A bias as large as the logits themselves: logits that kept it (ADM's have none) would be far off.
    net.fc.bias.data.normal_(0, 5.0)
    return net.eval()


@pytest.fixture(scope="module")
def weights_file(random_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILE
    # Without the BN step counters, as in files converted before PyTorch had them.
    torch.save({k: v for k, v in random_net.state_dict().items() if "num_batches" not in k}, path)
    return path


def test_architecture_matches_published_layout(random_net):
    sd = random_net.state_dict()
    assert sum(p.numel() for p in random_net.parameters()) == FID_PARAMS
    assert sum(isinstance(m, torch.nn.Conv2d) for m in random_net.modules()) == 94
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    bad = [k for k in sd if not KEY_PATTERN.match(k)]
    assert not bad, bad[:5]


def test_loader_round_trips_state_dict(random_net, weights_file):
    with pytest.warns(UserWarning, match="6726825d"):  # a random file is not the published one
        net = load_inception(weights_file, device="cpu")
    theirs = random_net.state_dict()
    for key, value in net.state_dict().items():
        if "num_batches" not in key:
            assert torch.equal(value, theirs[key]), key
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_loader_reads_environment_variable(weights_file, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(weights_file))
    assert resolve_weights_path() == weights_file
    assert resolve_weights_path(str(weights_file)) == weights_file  # an explicit path wins


def test_missing_weights_explain_where_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(InceptionWeightsNotFound) as err:
        load_inception()
    assert WEIGHTS_FILE in str(err.value) and ENV_VAR in str(err.value) and "--inception" in str(err.value)
    with pytest.raises(InceptionWeightsNotFound, match="does not exist"):
        load_inception(tmp_path / "nope.pth")


def test_loader_rejects_wrong_state_dicts(random_net, tmp_path):
    sd = dict(random_net.state_dict())
    missing = dict(sd)
    del missing["Mixed_6d.branch1x1.conv.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        load_state_dict_checked(InceptionV3(), missing)
    wrong = dict(sd)
    wrong["fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(ValueError, match="wrong shapes.*fc.weight"):
        load_state_dict_checked(InceptionV3(), wrong)
    torch.save([1, 2], tmp_path / "not_a_state_dict.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_inception(tmp_path / "not_a_state_dict.pth", check_hash=False)


def test_forward_features(random_net):
    captured = {}
    random_net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("conv", o))
    random_net.Mixed_7c.register_forward_hook(lambda m, i, o: captured.__setitem__("last", o))
    images = torch.rand(2, 3, 32, 32) * 255  # resized to 299 inside
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the one 299px pass of the suite; one thread is robust on a busy box
    try:
        with torch.no_grad():
            out = random_net(images)
    finally:
        torch.set_num_threads(threads)
    assert out["pool"].shape == (2, 2048)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    assert out["logits"].shape == (2, 1008)
    assert captured["conv"].shape == (2, 192, 17, 17)
    assert out["pool"].abs().mean() > 0.1 and (out["pool"][0] - out["pool"][1]).abs().max() > 1e-2
    # spatial is TF's channels-last [17, 17, 7] flattened: undo it and compare with the layer.
    torch.testing.assert_close(out["spatial"].view(2, 17, 17, 7).permute(0, 3, 1, 2), captured["conv"][:, :7])
    torch.testing.assert_close(out["pool"], captured["last"].mean((2, 3)))
    # ADM's softmax graph uses W without the bias.
    torch.testing.assert_close(out["logits"], out["pool"] @ random_net.fc.weight.T)


def _tf1_resize_reference(img, oh, ow):
    # TF 1.x ResizeBilinear, align_corners=False: source = dst * (in / out); upper tap = ceil.
    h, w = img.shape
    out = np.empty((oh, ow))
    for i in range(oh):
        y = i * (h / oh)
        y0, y1 = int(np.floor(y)), min(int(np.ceil(y)), h - 1)
        for j in range(ow):
            x = j * (w / ow)
            x0, x1 = int(np.floor(x)), min(int(np.ceil(x)), w - 1)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * (x - x0)
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


def test_tf1_resize():
    # By hand: [a, b] -> 4 samples at source positions 0, 0.5, 1, 1.5 (clamped) = [a, (a+b)/2, b, b].
    x = torch.tensor([[[[2.0, 10.0]]]])
    assert resize_bilinear_tf1(x, (1, 4)).flatten().tolist() == [2.0, 6.0, 10.0, 10.0]
    img = torch.rand(1, 1, 5, 7, dtype=torch.float64)
    assert torch.equal(resize_bilinear_tf1(img, (5, 7)), img)
    for size in [(11, 13), (3, 4), (299, 299)]:
        np.testing.assert_allclose(resize_bilinear_tf1(img, size)[0, 0].numpy(),
                                   _tf1_resize_reference(img[0, 0].numpy(), *size), rtol=1e-6, atol=1e-6)


def test_images_to_nchw_and_batched_extraction():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    x = images_to_nchw(grey)
    assert x.shape == (2, 3, 4, 4) and torch.equal(x[:, 0], x[:, 2]) and x[1, 1, 3, 3] == 31
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        images_to_nchw(np.zeros((2, 4, 4, 2), np.uint8))

    class MeanNet(torch.nn.Module):  # stand-in: one feature per image, its mean pixel
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return {"pool": x.mean((1, 2, 3))[:, None]}

    images = np.random.default_rng(0).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    feats = extract_features(MeanNet(), images, batch_size=3, progress=False)
    np.testing.assert_allclose(feats["pool"][:, 0], images.reshape(10, -1).mean(1), rtol=1e-6)


# ----------------------------------------------------------------------------- independent network
FIDELITY_HELP = ("torch-fidelity is not installed: `make test` installs it (pip install --no-deps "
                 "torch-fidelity==0.4.0; its torchvision dependency is not needed and breaks diffusers here)")


def fidelity_inception_class():
    """torch-fidelity's FID Inception (``FeatureExtractorInceptionV3``, written from the TF graph
    independently of ours), imported without running the package's ``__init__``: that imports
    torchvision for other extractors, and PyPI's torchvision does not import beside the CPU torch
    build here. A bare package object stands in while the one module (and its helpers) load."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.fail(FIDELITY_HELP, pytrace=False)
    owned = lambda name: name == "torch_fidelity" or name.startswith("torch_fidelity.")  # noqa: E731
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if owned(name)}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    finally:
        for name in [n for n in sys.modules if owned(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_features_equal_an_independent_implementation(weights_file, one_torch_thread):
    """Random weights in the layout of pt_inception-2015-12-05-6726825d.pth loaded into ours and into
    torch-fidelity's network (its loader is a strict ``load_state_dict``: the layout is checked too);
    uint8 NHWC images of sizes other than 299 through each side's ADM input ops (TF1 bilinear resize
    to 299, (x - 128) / 128). Compared: ``pool_3`` (FID, precision/recall), the bias-free logits
    ``pool_3 @ W`` (Inception Score) and the sFID features, which ADM reads from TF's
    ``mixed_6/conv``: TF's mixed blocks ``mixed, mixed_1, .., mixed_10`` are Mixed_5b..5d, 6a..6e,
    7a..7c, so ``mixed_6`` is Mixed_6d and ``conv`` its 1x1 branch; its first 7 channels flattened
    channels-last (TF's layout) give 17 * 17 * 7 values."""
    theirs = fidelity_inception_class()("inception-v3-compat", ["2048", "logits_unbiased"],
                                        feature_extractor_weights_path=str(weights_file))
    mixed_6_conv = []
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: mixed_6_conv.append(o.clone()))
    with pytest.warns(UserWarning, match="6726825d"):
        ours = load_inception(weights_file, device="cpu")
    rng = np.random.default_rng(0)
    for shape in [(2, 24, 40, 3), (1, 320, 304, 3)]:  # upsampled (non-square) and downsampled
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        got = extract_features(ours, images, progress=False)
        mixed_6_conv.clear()
        with torch.no_grad():
            pool, logits = theirs(torch.from_numpy(images).permute(0, 3, 1, 2))
        spatial = mixed_6_conv[0][:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)
        for name, ref in (("pool", pool), ("logits", logits), ("spatial", spatial)):
            ref = ref.double().numpy()
            assert got[name].shape == ref.shape, name
            err = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
            assert err < 1e-5, f"{name} {shape}: relative error {err:.2e}"
        assert np.abs(pool.numpy()).mean() > 0.1  # He-initialised weights keep the features alive
