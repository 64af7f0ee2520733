"""`sedflow.flows`: the context-cached affine coupling flow is zuko's coupling flow, evaluated
faster, and an artifact built from it round-trips."""

import numpy as np
import pytest
import torch

from sedflow.flows import coupling_masks, realnvp
from sedflow.posterior import load_model


@pytest.fixture(scope="module")
def pair():
    """The cached flow and zuko's own (uncached) one with the same weights."""
    torch.manual_seed(0)
    cached = realnvp(11, 16, (32, 32), 4, cache_context=True)
    plain = realnvp(11, 16, (32, 32), 4, cache_context=False)
    plain.load_state_dict(cached.state_dict(), strict=True)       # same parameters, same names
    with torch.no_grad():                                          # non-trivial weights
        for p in cached.parameters():
            p.add_(0.05 * torch.randn_like(p))
        plain.load_state_dict(cached.state_dict())
    return cached, plain


def test_cached_context_gives_zuko_coupling_flow_numbers(pair):
    cached, plain = pair
    c = torch.randn(5, 16)
    u = torch.randn(7, 5, 11)
    with torch.no_grad():
        lp_cached, lp_plain = cached.log_prob(u, c), plain.log_prob(u, c)
        torch.manual_seed(3)
        s_cached = cached.sample((200,), condition=c)
        torch.manual_seed(3)
        s_plain = plain.sample((200,), condition=c)
    assert lp_cached.shape == (7, 5) and torch.all(torch.isfinite(lp_cached))
    np.testing.assert_allclose(lp_cached.numpy(), lp_plain.numpy(), rtol=1e-5, atol=1e-4)
    assert s_cached.shape == (200, 5, 11)
    np.testing.assert_allclose(s_cached.numpy(), s_plain.numpy(), rtol=1e-5, atol=1e-5)
    # the context matters: another condition gives other densities
    assert (cached.log_prob(u, c + 1.0) - lp_cached).abs().max() > 1e-2


def test_coupling_transform_inverts(pair):
    cached, _ = pair
    c = torch.randn(1, 16)
    with torch.no_grad():
        flow = cached.net(c)
        x = torch.randn(300, 1, 11)
        np.testing.assert_allclose(flow.transform.inv(flow.transform(x)).numpy(), x.numpy(), atol=1e-4)


def test_density_is_normalised():
    """In two dimensions the density can be integrated on a grid: it sums to 1."""
    torch.manual_seed(1)
    net = realnvp(2, 3, (16, 16), 4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
        g = torch.linspace(-10, 10, 501)
        pts = torch.cartesian_prod(g, g)
        c = torch.randn(1, 3).expand(len(pts), 3)
        q = net.log_prob(pts[None], c).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(q) - 1.0) < 0.01


def test_marginal_shape_layer_starts_as_identity_and_inverts():
    """An untrained `ConditionalSinhArcsinh` leaves the coupling flow's density unchanged; a skewed,
    heavy-tailed shape gives a transform whose inverse undoes it and a density that integrates to 1."""
    torch.manual_seed(2)
    plain = realnvp(2, 3, (16, 16), 4)
    shaped = realnvp(2, 3, (16, 16), 4, marginal_shape=True)
    prefix = "net.transform.transforms."       # the couplings sit one place later, after the shape layer
    shifted = {}
    for k, v in plain.state_dict().items():
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            k = f"{prefix}{int(i) + 1}.{rest}"
        shifted[k] = v
    missing = shaped.load_state_dict(shifted, strict=False).missing_keys
    assert missing and all(k.startswith(prefix + "0.hyper.") for k in missing)
    g = torch.linspace(-25, 25, 1001)
    pts = torch.cartesian_prod(g, g)
    c = torch.randn(1, 3).expand(len(pts), 3)
    with torch.no_grad():
        np.testing.assert_allclose(shaped.log_prob(pts[None], c).numpy(), plain.log_prob(pts[None], c).numpy(),
                                   rtol=1e-5, atol=1e-5)
        last = shaped.net.transform.transforms[0].hyper[-1]
        last.weight.normal_(0.0, 0.1)
        last.bias.copy_(torch.tensor([0.3, -0.2, 0.2, -0.1, 0.8, -0.6, -0.5, 0.4]))   # pivot, width, skew, tail
        log_q = shaped.log_prob(pts[None], c)
        transform = shaped.net(torch.randn(1, 3)).transform
        x = torch.randn(300, 1, 2)
        np.testing.assert_allclose(transform.inv(transform(x)).numpy(), x.numpy(), atol=1e-4)
        assert not torch.allclose(log_q, plain.log_prob(pts[None], c))
    assert abs(float(log_q.exp().sum() * (g[1] - g[0]) ** 2) - 1.0) < 0.01


def test_masks_pair_up_and_cover_every_parameter():
    masks = coupling_masks(11, 6)
    for a, b in zip(masks[::2], masks[1::2]):
        assert torch.equal(a, ~b) and a.sum() == 5
    assert len({tuple(m.tolist()) for m in masks[::2]}) == 3      # the pairs split differently
    assert coupling_masks(11, 6)[0].tolist() == masks[0].tolist()   # deterministic


def test_realnvp_artifact_round_trips(tmp_path):
    """Saved as safetensors + JSON, loaded back without code: the same draws for the same seed."""
    from sedflow.posterior import ARCHITECTURES, PosteriorModel, build_estimator, load_model, save_model

    post = load_model()
    config = {**post.config, "architecture": {"name": "realnvp", "kwargs": ARCHITECTURES["realnvp"]}}
    net = build_estimator("realnvp", n_x=len(post.x_names))
    save_model(tmp_path / "m", net, config)
    back = load_model(tmp_path / "m")
    assert back.arch == "realnvp"
    flux = np.array([[5.0, 20.0, 40.0, 55.0, 70.0]])
    x = post.inputs.observables(flux, 0.05 * flux, np.array([0.1]))
    np.testing.assert_array_equal(PosteriorModel(net, back.config).sample(x, 300, seed=4), back.sample(x, 300, seed=4))


def test_bfloat16_sampling_stays_far_inside_the_monte_carlo_noise():
    """The shipped model sampled with bfloat16 hidden layers, same seed, same base draws, on held-out
    simulations: the shift of each posterior median is a small fraction of the shift another seed
    gives at 2,000 draws, widths agree to 3%; log_prob is float32 in both."""
    from sedflow.validate import held_out_simulations

    post = load_model("sdss", precision="float32")
    x = held_out_simulations(post, post.sed_model(), 120, seed=11)["x"]
    ref, other_seed = post.sample(x, 2000, seed=1), post.sample(x, 2000, seed=2)
    post.precision = "bfloat16"
    assert post.precision == "bfloat16"
    bf16 = post.sample(x, 2000, seed=1)
    assert not np.array_equal(bf16, ref)                           # the bfloat16 path did run
    sd = ref.std(axis=1)
    shift = np.abs(np.median(bf16, axis=1) - np.median(ref, axis=1)) / sd
    noise = np.abs(np.median(other_seed, axis=1) - np.median(ref, axis=1)) / sd
    assert np.median(shift) < 0.2 * np.median(noise) and shift.max() < 0.2
    np.testing.assert_allclose(bf16.std(axis=1), sd, rtol=0.03)
    theta = ref[:, 0]
    lp_bf16 = post.log_prob(theta, x)
    post.precision = "float32"
    np.testing.assert_array_equal(lp_bf16, post.log_prob(theta, x))


def test_precision_choices():
    from sedflow.flows import bfloat16_is_fast, resolve_precision
    from sedflow.posterior import build_estimator

    assert resolve_precision("auto") == ("bfloat16" if bfloat16_is_fast() else "float32")
    coupling = build_estimator("coupling", n_x=16)                 # zuko MAF: no bfloat16 path
    assert resolve_precision("auto", coupling) == "float32"
    with pytest.raises(ValueError, match="realnvp"):
        resolve_precision("bfloat16", coupling)
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model("sdss", precision="float16")


@pytest.mark.parametrize("hidden, marginal_shape", [((24,), False), ((24, 24, 24), False), ((24, 24), True)])
def test_bfloat16_sampler_for_any_depth(hidden, marginal_shape):
    """The bfloat16 sampler runs zuko's MLP of any depth, and a flow's other transforms in float32;
    with the same seed its draws stay near the float32 ones."""
    from sedflow.flows import make_sampler

    torch.manual_seed(0)
    net = realnvp(6, 4, hidden, 4, marginal_shape=marginal_shape)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))      # a non-identity sinh-arcsinh step as well
    c = torch.randn(3, 4)
    with torch.no_grad():
        torch.manual_seed(1)
        ref = make_sampler(net, "float32")(500, c)
        torch.manual_seed(1)
        bf16 = make_sampler(net, "bfloat16")(500, c)
    assert bf16.shape == ref.shape == (500, 3, 6) and bf16.dtype == torch.float32
    assert not torch.equal(ref, bf16)
    np.testing.assert_allclose(bf16.numpy(), ref.numpy(), atol=0.05 * float(ref.std()))


@pytest.mark.parametrize("n_cond", [7, 65])      # 65 > MAX_FUSED_CONDITIONS: the float32 first layer
def test_packed_coupling_inverts_zukos_coupling(n_cond):
    """One coupling as the bfloat16 sampler packs it (all coordinates at once, zero weights for the
    conditioning half): its first layer is relu(x W_a^T + W_x c + b) within one bfloat16 rounding of
    the exact value; its inverse leaves the conditioning coordinates bit for bit and inverts zuko's
    forward map as accurately as the coupling's own bfloat16 arithmetic (`sampling_precision`) does."""
    from sedflow.flows import MAX_FUSED_CONDITIONS, _onehot_columns, _PackedCoupling, sampling_precision

    torch.manual_seed(3)
    net = realnvp(11, 16, (48, 48), 2)
    layer = net.net.transform.transforms[0]
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        c, x = 3.0 * torch.randn(n_cond, 16), torch.randn(300, n_cond, 11)
        y = layer(c)(x)                                            # zuko's forward map, float32
        packed = _PackedCoupling(layer)
        onehot = _onehot_columns(n_cond, 300) if n_cond <= MAX_FUSED_CONDITIONS else None
        first = layer.hyper[0]
        idx_a = layer.mask.nonzero().squeeze(-1)
        exact = torch.relu(torch.cat([y[..., idx_a], c.expand(300, -1, -1)], -1).double() @ first.weight.double().T
                           + first.bias.double())
        phi = packed.first_layer(y.reshape(-1, 11), c, onehot)
        assert phi.dtype == torch.bfloat16
        assert torch.all((phi.double().view(exact.shape) - exact).abs() <= 2.0 ** -8 * exact.abs() + 1e-4)
        back = packed.inverse(y.reshape(-1, 11), c, onehot).view(y.shape)
        with sampling_precision(net, "bfloat16"):
            own = layer(c).inv(y)
    assert torch.equal(back[..., layer.mask], y[..., layer.mask])
    transformed = ~layer.mask
    assert not torch.equal(y[..., transformed], x[..., transformed])     # the coupling did move them
    err, own_err = (back - x)[..., transformed].abs(), (own - x)[..., transformed].abs()
    assert err.median() < 0.005 and err.max() <= 2 * own_err.max()


@pytest.mark.parametrize("batch", [40, 1024])
def test_bfloat16_training_gradients_follow_the_float32_ones(batch):
    """`sedflow train --precision bfloat16` runs the loss through the couplings' bfloat16 path with
    autograd: the loss within 1e-2 nats of float32, its gradient pointing the same way (cosine > 0.99)."""
    from sedflow.flows import sampling_precision
    from sedflow.train import _nll_module

    torch.manual_seed(0)
    net = realnvp(11, 16, (160, 160), 5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = _nll_module(net)
    u, x = torch.randn(batch, 11), torch.randn(batch, 16)

    def loss_and_grad():
        net.zero_grad()
        loss = model(u, x).mean()
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])

    ref_loss, ref_grad = loss_and_grad()
    with sampling_precision(net, "bfloat16"):
        loss, grad = loss_and_grad()
    assert loss != ref_loss and abs(loss - ref_loss) < 1e-2     # the bfloat16 path did run, and stays close
    assert float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)) > 0.99
