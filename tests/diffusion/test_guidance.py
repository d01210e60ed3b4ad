"""Classifier-free guidance: one batched call per step, the closed-form extrapolation, scale 1 = off."""
import pytest
import torch

from gladiff.diffusion import create_objective, guided_prediction

NULL = 2


class Recorder:
    """Wraps a model, recording the batch size and labels of every call."""

    def __init__(self, model, null_label=NULL):
        self.model, self.null_label, self.calls = model, null_label, []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], None if y is None else y.clone()))
        return self.model(x, t, y)


def _mixtures(oracles, gmm):
    make = oracles["make_mixture"]
    return {
        0: make([0.6, 0.4], [[1.0, 1.0], [0.5, -0.5]], [[[0.05, 0.0], [0.0, 0.05]], [[0.03, 0.01], [0.01, 0.02]]]),
        1: make([1.0], [[-1.0, 0.2]], [[[0.1, 0.0], [0.0, 0.2]]]),
        NULL: gmm,
    }


def _oracle(oracles, gmm, objective):
    mixtures = _mixtures(oracles, gmm)
    if objective.name == "flow":
        return oracles["FlowOracle"](mixtures, null_label=NULL)
    return oracles["DDPMOracle"](mixtures, learn_sigma=objective.learn_sigma, null_label=NULL)


CASES = [  # (objective options, sampler, steps, sampler options)
    (("ddpm", dict(learn_sigma=True)), "ddpm", 40, {}),
    (("ddpm", dict(learn_sigma=True)), "ddim", 20, dict(eta=0.5)),
    (("ddpm", dict(learn_sigma=False)), "ddpm", "ddim25", {}),
    (("flow", {}), "euler", 15, {}),
    (("flow", {}), "heun", 8, {}),
    (("flow", {}), "dopri5", None, dict(rtol=1e-6, atol=1e-6)),
    (("ddpm", dict(learn_sigma=True)), "dpm++2m", 10, {}),
    (("ddpm", dict(learn_sigma=True)), "dpm++2m-sde", 10, {}),
    (("ddpm", dict(learn_sigma=False)), "unipc", 10, {}),
    (("flow", {}), "midpoint", 6, {}),
    (("flow", {}), "dpm++2m", 10, {}),
]


@pytest.mark.parametrize("objective,sampler,steps,options", CASES)
def test_scale_one_is_no_guidance(oracles, gmm, objective, sampler, steps, options):
    obj = create_objective(objective[0], **objective[1])
    y = torch.tensor([0, 1, 0, 1, 1])
    plain = Recorder(_oracle(oracles, gmm, obj))
    guided = Recorder(_oracle(oracles, gmm, obj))
    a = obj.sample(plain, (5, 2), y, sampler=sampler, steps=steps, seed=1, dtype=torch.float64, **options)
    b = obj.sample(guided, (5, 2), y, sampler=sampler, steps=steps, seed=1, dtype=torch.float64,
                   cfg_scale=1.0, **options)
    assert torch.equal(a, b)
    # no null pass was made: every call saw the batch of 5 with the real labels
    assert all(n == 5 and torch.equal(labels, y) for n, labels in guided.calls)


@pytest.mark.parametrize("objective,sampler,steps,options", CASES)
def test_guided_sampling_equals_closed_form_extrapolation(oracles, gmm, objective, sampler, steps, options):
    """Sampling with cfg_scale s equals sampling (same seed) from the model whose output is computed
    outside the library as uncond + s * (cond - uncond) from two separate oracle calls, with the
    variance channels of a learned-sigma model taken from the conditional call."""
    s = 3.5
    obj = create_objective(objective[0], **objective[1])
    y = torch.tensor([0, 1, 1, 0, 0, 1])
    oracle = _oracle(oracles, gmm, obj)
    recorder = Recorder(oracle)

    def extrapolated(x, t, labels):
        cond = oracle(x, t, labels)
        uncond = oracle(x, t, torch.full_like(labels, NULL))
        c = x.shape[1]
        eps = uncond[:, :c] + s * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    guided = obj.sample(recorder, (6, 2), y, sampler=sampler, steps=steps, seed=4, dtype=torch.float64,
                        cfg_scale=s, **options)
    reference = obj.sample(extrapolated, (6, 2), y, sampler=sampler, steps=steps, seed=4,
                           dtype=torch.float64, **options)
    torch.testing.assert_close(guided, reference, rtol=1e-10, atol=1e-10)
    # one model call per step, on the doubled batch [y; null]
    expected = torch.cat([y, torch.full_like(y, NULL)])
    assert recorder.calls and all(n == 12 and torch.equal(labels, expected) for n, labels in recorder.calls)
    if steps is not None:
        assert len(recorder.calls) == (2 * steps if sampler in ("heun", "midpoint") else int(str(steps).lstrip("dim")))


@pytest.mark.parametrize("objective,sampler,steps", [(("ddpm", dict(learn_sigma=True)), "ddpm", 250),
                                                     (("ddpm", dict(learn_sigma=False)), "ddim", 50),
                                                     (("flow", {}), "heun", 20),
                                                     (("ddpm", dict(learn_sigma=True)), "dpm++2m", 20),
                                                     (("ddpm", dict(learn_sigma=True)), "unipc", 20),
                                                     (("flow", {}), "dpm++2m", 20)])
def test_guided_gaussians_land_on_the_extrapolated_gaussian(oracles, objective, sampler, steps):
    """For Gaussians N(m_c, S) (class 0) and N(m_u, S) (null) with one covariance, the optimal epsilon and
    velocity are affine in the mean, so guidance with scale s is exact sampling from N(m_u + s (m_c - m_u), S).
    N = 10,000, tolerance 0.03 on mean and covariance entries (Monte-Carlo standard error ~0.005)."""
    make = oracles["make_mixture"]
    cov = [[0.2, 0.05], [0.05, 0.1]]
    m_c, m_u, s = torch.tensor([0.4, -0.2]), torch.tensor([0.0, 0.3]), 2.5
    mixtures = {0: make([1.0], [m_c.tolist()], [cov]), NULL: make([1.0], [m_u.tolist()], [cov])}
    obj = create_objective(objective[0], **objective[1])
    model = (oracles["FlowOracle"](mixtures, null_label=NULL) if obj.name == "flow"
             else oracles["DDPMOracle"](mixtures, learn_sigma=obj.learn_sigma, null_label=NULL))
    n = 10_000
    x = obj.sample(model, (n, 2), torch.zeros(n, dtype=torch.long), sampler=sampler, steps=steps, seed=0,
                   cfg_scale=s, dtype=torch.float64)
    target_mean = (m_u + s * (m_c - m_u)).double()
    assert (x.mean(0) - target_mean).abs().max() < 0.03          # 1.0 and 1.25 away from m_c and m_u
    assert (torch.cov(x.T) - torch.tensor(cov, dtype=torch.float64)).abs().max() < 0.03


def test_guided_prediction_formula():
    cond = torch.tensor([[1.0, 2.0, 5.0, 6.0]])
    uncond = torch.tensor([[0.0, 4.0, 7.0, 8.0]])
    torch.testing.assert_close(guided_prediction(cond, uncond, 3.0), torch.tensor([[3.0, -2.0, 1.0, 2.0]]))
    # learned sigma: first C = 2 channels guided, the variance channels from the conditional half
    torch.testing.assert_close(guided_prediction(cond, uncond, 3.0, guided_channels=2),
                               torch.tensor([[3.0, -2.0, 5.0, 6.0]]))


def test_guidance_needs_a_null_label_and_labels(oracles, gmm):
    obj = create_objective("ddpm", learn_sigma=False)
    model = oracles["DDPMOracle"](_mixtures(oracles, gmm))  # null_label None, like a model without dropout
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="cfg_scale=4.0 needs a null label"):
        obj.sample(model, (2, 2), y, steps=5, cfg_scale=4.0)
    # an explicit null_label makes it work, and wins over the model's attribute
    rec = Recorder(model, null_label=None)
    obj.sample(rec, (2, 2), y, steps=5, cfg_scale=4.0, null_label=NULL)
    assert all(torch.equal(labels[2:], torch.full((2,), NULL)) for _, labels in rec.calls)
    with pytest.raises(ValueError, match="needs class labels y"):
        obj.sample(Recorder(model), (2, 2), None, steps=5, cfg_scale=4.0)


def test_unconditional_sampling_uses_the_null_label(oracles, gmm):
    obj = create_objective("flow")
    rec = Recorder(oracles["FlowOracle"](_mixtures(oracles, gmm)))
    obj.sample(rec, (3, 2), None, sampler="euler", steps=4)
    assert len(rec.calls) == 4 and all(torch.equal(labels, torch.full((3,), NULL)) for _, labels in rec.calls)
