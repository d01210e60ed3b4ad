"""The zoo: names, exact parameter counts and GMACs from docs/architecture.md, shapes and input errors."""
import pytest
import torch
import torch.nn.functional as F

from gladiff import create_model, list_models
from gladiff.models.flops import model_summary

# docs/architecture.md: p=2, C=4, 1000 classes, learned sigma, 32x32 latents; GMACs linear+conv at 256x256.
SPEC = {
    "DiG-S/2": (33_081_632, 32_983_328, 5.49),
    "DiG-B/2": (130_748_192, 130_551_584, 21.88),
    "DiG-L/2": (465_022_496, 464_760_352, 79.30),
    "DiG-XL/2": (675_953_952, 675_659_040, 114.67),
    "DiT-S/2": (32_963_360, 32_865_056, 5.45),
    "DiT-B/2": (130_512_416, 130_315_808, 21.80),
    "DiT-L/2": (458_102_816, 457_840_672, 77.48),
    "DiT-XL/2": (675_129_632, 674_834_720, 114.39),
}
TINY = dict(input_size=8, in_channels=2, num_classes=5, depth=4, hidden_size=32, num_heads=2)


@pytest.mark.parametrize("name", list(SPEC))
def test_parameter_counts_and_gmacs_match_spec(name):
    params, trainable, gmacs = SPEC[name]
    s = model_summary(name, image_size=256)
    assert s["params"] == params
    assert s["trainable"] == trainable
    assert abs(s["gmacs_linear_conv"] - gmacs) / gmacs < 0.01


def test_mixer_gmacs_as_spec_reads_them():
    # DiT's printed figure = linear + 2 T^2 D per block; DiG-XL/2's mixer adds about 1.3 GMACs.
    dit = model_summary("DiT-S/2")
    assert abs(dit["gmacs_total"] - 6.06) < 0.01
    assert abs(model_summary("DiG-XL/2")["gmacs_mixer"] - 1.3) < 0.05


def test_registry_lists_every_size_and_patch():
    names = list_models()
    assert len(names) == 24 and len(set(names)) == 24
    for fam in ("DiG", "DiT"):
        for size in ("S", "B", "L", "XL"):
            for p in (2, 4, 8):
                assert f"{fam}-{size}/{p}" in names
    assert list_models("DiT") == [n for n in names if n.startswith("DiT")]


def test_patch_sizes_change_tokens():
    for p in (2, 4, 8):
        with torch.device("meta"):
            m = create_model(f"DiG-S/{p}")
        assert m.patch_size == p and m.pos_embed.shape[1] == (32 // p) ** 2
        assert m.final_layer.linear.out_features == p * p * 8


@pytest.mark.parametrize("family", ["DiG", "DiT"])
def test_forward_shapes_and_sizes(family):
    torch.manual_seed(0)
    m = create_model(f"{family}-S/2", **TINY)
    y = torch.tensor([0, 4, 5])  # 5 is the null class
    out = m(torch.randn(3, 2, 8, 8), torch.tensor([0.0, 10.5, 999.0]), y)
    assert out.shape == (3, 4, 8, 8)
    # non-square and other sizes than built: positions are recomputed
    assert m(torch.randn(2, 2, 6, 10), torch.tensor([3, 4]), y[:2]).shape == (2, 4, 6, 10)
    m2 = create_model(f"{family}-S/2", learn_sigma=False, **{**TINY, "input_size": (4, 6)})
    assert m2(torch.randn(1, 2, 4, 6), torch.tensor([1]), torch.tensor([1])).shape == (1, 2, 4, 6)


def test_position_embedding_for_other_sizes_is_the_sincos_table():
    from gladiff.models.layers import sincos_pos_embed_2d

    m = create_model("DiT-S/2", **TINY)
    x = torch.zeros(1, 2, 8, 8)
    torch.testing.assert_close(m.pos_embed_for(m.grid, x), m.pos_embed)
    other = m.pos_embed_for((3, 5), x)
    assert other.shape == (1, 15, 32)
    table = torch.from_numpy(sincos_pos_embed_2d(32, (3, 5)).copy()).float()
    torch.testing.assert_close(other[0], table)
    # first half encodes the column: tokens in one column share it
    torch.testing.assert_close(table[0, :16], table[5, :16])
    torch.testing.assert_close(table[0, 16:], table[1, 16:])


def test_adaln_zero_init_gives_zero_output():
    for fam in ("DiG", "DiT"):
        m = create_model(f"{fam}-S/2", **TINY)
        out = m(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
        assert torch.count_nonzero(out) == 0


def test_dit_attention_runs_through_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append(a[0].shape)
        return real(*a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m = create_model("DiT-S/2", **TINY)
    m(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert len(calls) == 4 and calls[0] == (2, 2, 16, 16)  # [B, heads, T, head_dim]


def test_forward_with_cfg():
    torch.manual_seed(0)
    m = create_model("DiG-S/2", **TINY)
    for p in m.parameters():  # leave adaLN-Zero so the output depends on the label
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 2, 8, 8)
    t = torch.tensor([5.0, 5.0, 5.0, 5.0])
    y = torch.tensor([1, 3, 5, 5])
    xx = torch.cat([x, x])
    out = m.forward_with_cfg(xx, t, y, 4.0)
    full = m(xx, t, y)
    cond, uncond = full[:2, :2], full[2:, :2]
    torch.testing.assert_close(out[:2, :2], uncond + 4.0 * (cond - uncond))
    torch.testing.assert_close(out[:2, 2:], full[:2, 2:])
    torch.testing.assert_close(m.forward_with_cfg(xx, t, y, 1.0)[:2], full[:2])


def test_bad_inputs_raise_clear_errors():
    m = create_model("DiG-S/2", **TINY)
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown model 'DiG-M/2'.*DiG-S/2"):
        create_model("DiG-M/2")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("DiG-S/3")
    with pytest.raises(ValueError, match="unknown option"):
        create_model("DiT-S/2", scan_schedule="srem")
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        m(torch.randn(2, 2, 7, 8), t, y)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        create_model("DiG-S/8", input_size=12)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\]"):
        m(x, t, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="labels must be in"):
        m(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"y must be \[B\]"):
        m(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"t must be \[B\]"):
        m(x, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError, match="integer class labels"):
        m(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        create_model("DiG-S/2", **{**TINY, "detph": 2})
    no_null = create_model("DiG-S/2", class_dropout_prob=0.0, **TINY)
    assert no_null.null_label is None and m.null_label == 5
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\]"):
        no_null(x, t, torch.tensor([0, 5]))


@pytest.mark.parametrize("name", ["DiG-S/2", "DiT-S/2"])
@pytest.mark.parametrize("option,value,words", [
    ("depth", 0, "depth must be a positive integer, got 0"),
    ("depth", -2, "depth must be a positive integer, got -2"),
    ("depth", 2.0, "depth must be a positive integer, got 2.0"),
    ("input_size", 0, "input_size must be a positive integer, got 0"),
    ("input_size", (8, 0), "input_size must be a positive integer, got 0"),
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("num_heads", 0, "num_heads must be a positive integer"),
    ("in_channels", 0, "in_channels must be a positive integer"),
    ("num_classes", 0, "num_classes must be a positive integer"),
    ("class_dropout_prob", 1.5, r"class_dropout_prob .* in \[0, 1\); got 1.5"),
    ("class_dropout_prob", -0.1, r"class_dropout_prob .* in \[0, 1\); got -0.1"),
])
def test_construction_values_that_would_build_garbage_are_refused(name, option, value, words):
    """Depth 0 built a model without blocks, input_size 0 one without tokens, a dropout
    probability of 1.5 dropped every label: each is now a ValueError naming the option and value."""
    with pytest.raises(ValueError, match=words):
        create_model(name, **{**TINY, option: value})


def test_family_options_are_checked():
    with pytest.raises(ValueError, match="intermediate_size must be a positive integer or None, got 0"):
        create_model("DiG-S/2", intermediate_size=0, **TINY)
    with pytest.raises(ValueError, match="mlp_ratio must be a number > 0, got 0"):
        create_model("DiT-S/2", mlp_ratio=0, **TINY)
