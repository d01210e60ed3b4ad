"""Flow matching: interpolant, velocity target, the time fed to the model, and the ODE step rules."""
import pytest
import torch

from gladiff.diffusion import create_objective


def test_training_inputs_and_target():
    obj = create_objective("flow")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.9, 1.0], dtype=torch.float64)
    pred = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    seen = {}

    def model(x, tm, y):
        seen.update(x=x, t=tm, y=y)
        return pred

    out = obj.training_loss(model, x0, torch.tensor([1, 2, 3, 0]), t=t, noise=noise)
    tb = t.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], (1 - tb) * x0 + tb * noise, rtol=0, atol=1e-15)
    torch.testing.assert_close(seen["x"][0], x0[0], rtol=0, atol=0)     # t = 0 is data
    torch.testing.assert_close(seen["x"][3], noise[3], rtol=0, atol=0)  # t = 1 is noise
    assert seen["t"].tolist() == [0.0, 250.0, 900.0, 1000.0]            # DDPM's timestep range
    assert seen["y"].tolist() == [1, 2, 3, 0]
    mse = ((pred - (noise - x0)) ** 2).reshape(4, -1).mean(1)
    torch.testing.assert_close(out["mse"], mse, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["loss"], mse.mean(), rtol=1e-14, atol=0)


def test_time_scale_option():
    obj = create_objective("flow", time_scale=1.0)
    seen = []
    obj.training_loss(lambda x, t, y: seen.append(t) or torch.zeros_like(x), torch.zeros(2, 1),
                      None, t=torch.tensor([0.5, 0.75]))
    assert seen[0].tolist() == [0.5, 0.75]


def _affine_velocity(a=0.3, b=0.2):
    """v(x, t) = a x + b (t / 1000): the ODE dx/dt = a x + b t has a closed-form solution."""
    def model(x, t, y):
        return a * x + b * (t / 1000).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return model


def test_euler_and_heun_step_rules():
    """One step from t = 1 to 0: Euler x1 - v(x1, 1); Heun x1 - (v(x1, 1) + v(x1 - v(x1, 1), 0)) / 2."""
    obj = create_objective("flow")
    a, b = 0.3, 0.2
    model = _affine_velocity(a, b)
    shape = (3, 2)
    x1 = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    euler = obj.sample(model, shape, None, sampler="euler", steps=1, seed=2, dtype=torch.float64)
    v1 = a * x1 + b
    torch.testing.assert_close(euler, x1 - v1, rtol=1e-14, atol=1e-14)
    heun = obj.sample(model, shape, None, sampler="heun", steps=1, seed=2, dtype=torch.float64)
    torch.testing.assert_close(heun, x1 - 0.5 * (v1 + a * (x1 - v1)), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("sampler,steps,tol", [("euler", 200, 1e-3), ("heun", 20, 1e-4), ("dopri5", None, 1e-5)])
def test_samplers_converge_to_the_exact_ode_solution(sampler, steps, tol):
    """dx/dt = a x + b t from t = 1 to 0: x(0) = e^{-a} (x1 + b/a + b/a^2) - b/a^2 (integrate backwards).
    Measured max errors: Euler/200 7e-4 (first order), Heun/20 3.5e-5 (second order), dopri5 4e-7."""
    obj = create_objective("flow")
    a, b = 0.3, 0.2
    shape = (4, 3)
    x1 = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = obj.sample(_affine_velocity(a, b), shape, None, sampler=sampler, steps=steps, seed=3, dtype=torch.float64)
    exact = torch.exp(torch.tensor(-a, dtype=torch.float64)) * (x1 + b / a + b / a ** 2) - b / a ** 2
    assert (x - exact).abs().max() < tol
