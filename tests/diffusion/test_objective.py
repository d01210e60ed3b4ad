"""The public objective API: construction, attributes, shapes/dtypes, determinism and error cases."""
import math
import re

import pytest
import torch

from gladiff.diffusion import OBJECTIVES, create_objective


def stand_in(learn_sigma, null_label=None):
    """A smooth fixed callable model(x, t, y) with the output width an objective expects."""
    def model(x, t, y):
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 1000
        out = 0.3 * torch.tanh(x) + 0.1 * tt
        if y is not None:
            out = out + 0.01 * y.to(x.dtype).reshape(tt.shape)
        return torch.cat([out, torch.zeros_like(out)], 1) if learn_sigma else out
    model.null_label = null_label
    return model


ALL_PAIRS = ([("ddpm", s) for s in ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc")]
             + [("flow", s) for s in ("euler", "heun", "midpoint", "dpm++2m", "dopri5")])


def test_registry_and_attributes():
    assert set(OBJECTIVES) == {"ddpm", "flow"}
    ddpm = create_objective("ddpm", num_timesteps=1000, beta_schedule="linear", learn_sigma=True)
    assert ddpm.learn_sigma is True and ddpm.samplers == ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc")
    assert ddpm.default_sampler == "ddpm" and ddpm.default_steps == 250
    assert create_objective("ddpm", learn_sigma=False).learn_sigma is False
    assert create_objective("ddpm", num_timesteps=100).default_steps == 100
    flow = create_objective("flow")
    assert flow.learn_sigma is False and flow.samplers == ("euler", "heun", "midpoint", "dpm++2m", "dopri5")
    assert flow.default_sampler == "heun" and flow.default_steps == 50


def test_construction_errors():
    with pytest.raises(ValueError, match="unknown objective 'edm'; valid: ddpm, flow"):
        create_objective("edm")
    with pytest.raises(ValueError, match="unknown option.*beta_schedule.*valid: learn_sigma, time_scale"):
        create_objective("flow", beta_schedule="linear")
    with pytest.raises(ValueError, match="learn_sigma must be False"):
        create_objective("flow", learn_sigma=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        create_objective("ddpm", learn_sigma=True, sigma_small=True)
    with pytest.raises(ValueError, match="unknown beta_schedule"):
        create_objective("ddpm", beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        create_objective("ddpm", default_sampler="dpm")


@pytest.mark.parametrize("name,sampler", ALL_PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_determinism(name, sampler, dtype):
    obj = create_objective(name)
    model = stand_in(obj.learn_sigma)
    shape, y = (3, 2, 4, 4), torch.tensor([0, 1, 2])
    steps = None if sampler == "dopri5" else 6
    a = obj.sample(model, shape, y, sampler=sampler, steps=steps, seed=5, dtype=dtype)
    assert a.shape == shape and a.dtype == dtype and torch.isfinite(a).all()
    b = obj.sample(model, shape, y, sampler=sampler, steps=steps, seed=5, dtype=dtype)
    assert torch.equal(a, b)
    c = obj.sample(model, shape, y, sampler=sampler, steps=steps, dtype=dtype,
                   generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, c)
    d = obj.sample(model, shape, y, sampler=sampler, steps=steps, seed=6, dtype=dtype)
    assert not torch.allclose(a, d)
    # no seed and no generator: torch's global RNG
    torch.manual_seed(9)
    e = obj.sample(model, shape, y, sampler=sampler, steps=steps, dtype=dtype)
    torch.manual_seed(9)
    assert torch.equal(e, obj.sample(model, shape, y, sampler=sampler, steps=steps, dtype=dtype))


def test_default_sampler_and_steps_are_used():
    calls = []
    obj = create_objective("ddpm", learn_sigma=False, default_steps="ddim10")

    def model(x, t, y):
        calls.append(t[0].item())
        return torch.zeros_like(x)
    obj.sample(model, (1, 1), None)
    assert calls == list(range(900, -1, -100))


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_sampling_errors(name):
    obj = create_objective(name)
    model = stand_in(obj.learn_sigma)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=f"unknown sampler 'plms' for objective '{name}'; valid: "
                                         + re.escape(", ".join(obj.samplers))):
        obj.sample(model, (2, 2), y, sampler="plms")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps must be positive"):
            obj.sample(model, (2, 2), y, steps=bad)
    with pytest.raises(ValueError, match=r"labels y have shape \(3,\) but the batch is 2"):
        obj.sample(model, (2, 2), torch.tensor([0, 1, 2]), steps=2)
    with pytest.raises(ValueError, match="labels y must be integers"):
        obj.sample(model, (2, 2), torch.tensor([0.0, 1.0]), steps=2)
    with pytest.raises(ValueError, match="shape must be"):
        obj.sample(model, (2,), y, steps=2)
    with pytest.raises(ValueError, match="either seed or generator"):
        obj.sample(model, (2, 2), y, steps=2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="unknown option"):
        obj.sample(model, (2, 2), y, sampler=obj.default_sampler, steps=2, temperature=0.5)
    wrong = stand_in(not obj.learn_sigma)
    with pytest.raises(ValueError, match=r"model output has shape \(2, \d, 3\), expected \(2, \d, 3\)"):
        obj.sample(wrong, (2, 2, 3), y, steps=2)


def test_ddpm_specific_errors():
    obj = create_objective("ddpm", learn_sigma=False)
    model = stand_in(False)
    with pytest.raises(ValueError, match="exceeds the 1000 training timesteps"):
        obj.sample(model, (1, 1), None, steps=1001)
    with pytest.raises(ValueError, match="no integer stride"):
        obj.sample(model, (1, 1), None, steps="ddim400")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        obj.sample(model, (1, 1), None, sampler="ddim", steps=5, eta=-1.0)
    with pytest.raises(ValueError, match="unknown option"):
        obj.sample(model, (1, 1), None, sampler="ddpm", steps=5, eta=1.0)  # eta is DDIM's
    with pytest.raises(ValueError, match="integer number of steps"):
        create_objective("flow").sample(stand_in(False), (1, 1), None, steps="ddim50")


@pytest.mark.parametrize("name,sampler", ALL_PAIRS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_model_output_names_the_step(name, sampler, bad):
    obj = create_objective(name)
    base = stand_in(obj.learn_sigma)
    seen = []

    def model(x, t, y):
        seen.append(t[0].item())
        out = base(x, t, y)
        return out.fill_(bad) if len(seen) == 3 else out
    steps = None if sampler == "dopri5" else 10
    with pytest.raises(FloatingPointError, match="NaN or inf at sampling step (3|2)/(10|\\?)"):
        obj.sample(model, (2, 1, 2, 2), None, sampler=sampler, steps=steps, seed=0)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x, t, y):
        return self.conv(x)


def test_training_mode_warning():
    obj = create_objective("flow")
    with pytest.warns(UserWarning, match="training mode"):
        obj.sample(TinyNet(), (1, 1, 2, 2), None, steps=1)


def test_device_resolution_order():
    """Explicit device, else the model's parameters, else y's device, else CPU (meta stands in for a GPU)."""
    from gladiff.diffusion.objective import _resolve_device

    on_meta = TinyNet().to("meta")
    y_meta = torch.zeros(1, dtype=torch.long, device="meta")
    assert _resolve_device("cpu", on_meta, y_meta) == torch.device("cpu")
    assert _resolve_device(None, on_meta, None) == torch.device("meta")
    assert _resolve_device(None, TinyNet(), y_meta) == torch.device("cpu")
    assert _resolve_device(None, lambda x, t, y: x, y_meta) == torch.device("meta")
    assert _resolve_device(None, lambda x, t, y: x, None) == torch.device("cpu")


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_training_loss_uses_global_rng_in_a_fixed_order(name):
    """t first, then the noise, both from torch's global RNG: a trainer that restores the RNG state
    reproduces the loss exactly, and passing the same t and noise explicitly gives the same result."""
    obj = create_objective(name)
    model = stand_in(obj.learn_sigma)
    x0 = torch.rand(4, 2, 3, 3) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(123)
    out = obj.training_loss(model, x0, y)
    torch.manual_seed(123)
    t = torch.randint(0, 1000, (4,)) if name == "ddpm" else torch.rand(4)
    noise = torch.randn_like(x0)
    again = obj.training_loss(model, x0, y, t=t, noise=noise)
    assert torch.equal(out["t"], again["t"]) and torch.equal(out["loss"], again["loss"])
    assert out["loss"].ndim == 0 and out["loss_per_sample"].shape == (4,) and out["mse"].shape == (4,)
    torch.testing.assert_close(out["loss"], out["loss_per_sample"].mean())


def test_training_loss_errors():
    ddpm, flow = create_objective("ddpm"), create_objective("flow")
    x0 = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        ddpm.training_loss(stand_in(True), x0, None, t=torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="integer tensor"):
        ddpm.training_loss(stand_in(True), x0, None, t=torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        flow.training_loss(stand_in(False), x0, None, t=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="noise has shape"):
        flow.training_loss(stand_in(False), x0, None, noise=torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match="learn_sigma objectives need 2\\*C"):
        ddpm.training_loss(stand_in(False), x0, None)
    with pytest.raises(ValueError, match="create the model with learn_sigma=False"):
        flow.training_loss(stand_in(True), x0, None)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_low_precision_model_output_gives_a_data_precision_loss(name):
    """Under bf16 autocast a network returns bf16; the loss is computed in the data's float32."""
    obj = create_objective(name)
    model = stand_in(obj.learn_sigma)
    out = obj.training_loss(lambda x, t, y: model(x, t, y).bfloat16(), torch.zeros(2, 1, 2, 2), None)
    assert out["loss"].dtype == torch.float32 and out["mse"].dtype == torch.float32
