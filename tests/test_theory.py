"""jhnas.theory: every relation on random networks in float64, against brute-force Jacobians.

Networks: random MLPs, small CNNs (with and without train-mode BatchNorm) and a tiny NB201
network, several initialisation seeds each. The oracle Jacobian is built with ``jax.jacfwd``
(forward mode), independent of the module's ``jax.jacrev``.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jhnas import hnas, metrics, ntk, theory
from jhnas import nn as jnn
from jhnas.net import from_flax

TOL = 1e-9
K = 3


class MLP(nn.Module):
    widths: tuple = (12,)
    act: str = "tanh"

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        act = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu}[self.act]
        for i, w in enumerate(self.widths):
            x = act(jnn.Dense(x.shape[-1], w)(x))
        return jnn.Dense(x.shape[-1], K)(x)


class CNN(nn.Module):
    bn: bool = False

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 4, 3, padding=1, use_bias=True)(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=False)(x)
        x = jnn.relu(self, x)
        x = jnn.Conv(4, 4, 3, strides=2, padding=1, use_bias=True)(x)
        x = jnp.tanh(x)
        return jnn.Dense(4, K)(x.mean((1, 2)))


NB201_ARCH = ("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+"
              "|avg_pool_3x3~0|none~1|skip_connect~2|")


def _net(kind):
    if kind == "nb201":
        from jhnas.spaces import nb201
        return nb201.make_net(NB201_ARCH, compile="network", C=2, N=1, num_classes=K), 8
    return {"mlp_tanh": (from_flax(MLP((12,), "tanh")), 4),
            "mlp_relu": (from_flax(MLP((10, 8), "relu")), 4),
            "cnn": (from_flax(CNN()), 6),
            "cnn_bn": (from_flax(CNN(bn=True)), 6)}[kind]


@pytest.fixture(scope="module")
def nets():
    return {}


def _random_params(shapes, rng):
    """Random float64 parameters of the given shapes (numpy RNG: nothing to compile): kernels
    N(0, 1/fan_in), BatchNorm scales 1 + N(0, 0.04), other leaves N(0, 0.01)."""
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]

    def draw(path, leaf):
        name, shape = str(getattr(path[-1], "key", path[-1])), leaf.shape
        z = rng.normal(size=shape)
        if name == "kernel":
            return z / math.sqrt(max(math.prod(shape[:-1]), 1))
        return 1.0 + 0.2 * z if name == "scale" else 0.1 * z

    return jax.tree.structure(shapes).unflatten(
        [jnp.asarray(draw(path, leaf), jnp.float64) for path, leaf in flat])


def _case(nets, kind, seed, n=5):
    """(net, float64 params, (x, y)) of one seed; call inside ``jax.enable_x64(True)``."""
    if kind not in nets:
        net, size = _net(kind)
        x1 = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        nets[kind] = (net, size, jax.eval_shape(net.init, jax.random.key(0), x1))
    net, size, shapes = nets[kind]
    rng = np.random.default_rng(1000 * seed + len(kind))
    x = jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float64)
    y = jnp.asarray(rng.integers(0, K, n), jnp.int32)
    return net, _random_params(shapes, rng), (x, y)


def _violations(check):
    return [b for b in theory.bounds(check) if not theory.holds(b, TOL)]


def _oracle_jacobian(net, params, x, param_set):
    """J [nK x P] of all logits by forward mode, over the ``param_set`` leaves in tree order."""
    leaves, treedef = jax.tree.flatten(params)
    keep = treedef.flatten_up_to(ntk.param_mask(params, param_set))
    sel = [a for a, k in zip(leaves, keep) if k]
    vec, unravel = ravel_pytree(sel)

    def f(v):
        it = iter(unravel(v))
        return net.apply(treedef.unflatten([next(it) if k else a for a, k in zip(leaves, keep)]),
                         x).reshape(-1)

    return np.asarray(jax.jit(jax.jacfwd(f), compiler_options=theory.COMPILER_OPTIONS)(vec))


# ----------------------------------------------------------------------------- every bound holds

CASES = [("mlp_tanh", 3), ("mlp_relu", 2), ("cnn", 2), ("cnn_bn", 2), ("nb201", 2)]


@pytest.mark.parametrize("kind, seeds", CASES, ids=[c[0] for c in CASES])
def test_every_bound_holds(nets, kind, seeds):
    """All statements on several seeds; the module's Jacobian equals a forward-mode oracle."""
    with jax.enable_x64(True):
        for seed in range(seeds):
            net, params, batch = _case(nets, kind, seed)
            # the dense Hessian (one more compilation) on two of the networks
            checks = theory.check_all(net, params, batch, steps=12,
                                      hessian_max=1500 if kind in ("mlp_tanh", "cnn_bn") else 0)
            for name, check in checks.items():
                bad = _violations(check)
                assert not bad, f"{kind} seed {seed} {name}: {bad}"
            if seed == 0 and kind in ("mlp_relu", "cnn_bn"):  # oracle (one more compilation)
                logits, jac = theory.jacobian(net, params, batch, param_set="kernels")
                want = _oracle_jacobian(net, params, batch[0], "kernels")
                np.testing.assert_allclose(jac, want, rtol=1e-10,
                                           atol=1e-12 * np.abs(want).max())
    rows = theory.table(checks)
    skipped = {r["name"] for r in rows if r["status"].startswith("skipped")}
    assert all(r["status"].startswith("skipped: ") for r in rows if r["name"] in skipped)
    assert skipped == (set() if kind in ("mlp_tanh", "cnn_bn") else {"hessian", "hessian_ntk"})
    # the statements are not vacuous: the gradient bounds are within an order of magnitude
    assert checks["grad_norm"].upper.rel_slack < 0.99
    assert checks["linear_training"].upper.rel_slack.max() < 0.99


def test_label_ntk_is_the_library_ntk_and_metrics_agree(nets):
    """The theory's M is jhnas's ntk_trace; its GradNorm/SNIP/GraSP are jhnas's metrics (no BN:
    the official decomposition equals the exact Jacobian)."""
    with jax.enable_x64(True):
        net, params, batch = _case(nets, "mlp_tanh", 0)
        gram = theory.ntk_matrix(net, params, batch, output="label", param_set="layers")
        lib = np.asarray(ntk.empirical_ntk_fn(net, implementation="jacobian", output="label",
                                              params="layers")(params, *batch))
        np.testing.assert_allclose(gram, lib, rtol=1e-10)
        got = metrics.metrics_fn(net, ["ntk_trace", "grad_norm", "snip", "grasp"])(
            params, metrics_batch(batch))
        assert math.isclose(theory.spectrum(gram).M, got["ntk_trace"], rel_tol=1e-9)
        # GraSP first: its loss pass (with H g) serves the two others
        assert math.isclose(theory.check_grasp(net, params, batch).grasp, got["grasp"],
                            rel_tol=1e-8)
        assert math.isclose(theory.check_grad_norm(net, params, batch).official,
                            got["grad_norm"], rel_tol=1e-9)
        assert math.isclose(theory.check_snip(net, params, batch).snip, got["snip"],
                            rel_tol=1e-9)


def metrics_batch(batch):
    from jhnas.data import Batch
    return Batch(*batch)


def test_per_sample_ntk_breaks_the_identity_under_batchnorm(nets):
    """With train-mode BatchNorm only the Jacobian of the batched function satisfies
    ||g||^2 = u^T Theta u / n^2: the NTK of per-sample Jacobians (each sample run alone, so
    normalised by its own statistics) misses it by far; without BatchNorm the two coincide."""
    with jax.enable_x64(True):
        for kind, coupled in (("cnn_bn", True), ("cnn", False)):
            net, params, batch = _case(nets, kind, 0)
            gn = theory.check_grad_norm(net, params, batch)
            assert theory.holds(gn.identity, TOL)
            x, y = batch
            rows = np.concatenate([theory.jacobian(net, params, (x[i:i + 1], y[i:i + 1]),
                                                   param_set="kernels")[1]
                                   for i in range(x.shape[0])])
            logits = theory.jacobian(net, params, batch)[0]
            p = np.exp(logits - logits.max(1, keepdims=True))
            u = (p / p.sum(1, keepdims=True) - np.eye(K)[np.asarray(y)]).reshape(-1)
            per = u @ rows @ rows.T @ u / x.shape[0] ** 2
            assert (abs(per - gn.grad_norm ** 2) > 1e-3 * gn.grad_norm ** 2) == coupled


# ----------------------------------------------------------------------------- tightness

def _eigvecs(net, params, batch, param_set, output="all"):
    sp = theory.spectrum(theory.ntk_matrix(net, params, batch, output=output,
                                           param_set=param_set))
    return sp, sp.eigenvectors[:, -1], sp.eigenvectors[:, 0]


@pytest.mark.parametrize("kind, seed", [("mlp_tanh", 1), ("cnn", 0)])
def test_gradient_bound_is_attained_along_extreme_eigenvectors(nets, kind, seed):
    """||J^T u|| / n reaches sqrt(lam_max) ||u|| / n for u = top eigenvector (a loss linear in the
    logits with that direction), and the lower bound for the bottom one."""
    with jax.enable_x64(True):
        net, params, batch = _case(nets, kind, seed)
        sp, top, bottom = _eigvecs(net, params, batch, "kernels")
        n = batch[0].shape[0]
        for v, row in ((top, "upper"), (bottom, "lower")):
            vv = jnp.asarray(v)
            check = theory.check_grad_norm(net, params, batch, param_set="kernels",
                                           loss=lambda lg, y, vv=vv: lg.reshape(-1) @ vv / n)
            assert theory.holds(check, TOL)
            assert abs(getattr(check, row).rel_slack) < 1e-9, (row, getattr(check, row))
            other = check.lower if row == "upper" else check.upper
            assert other.rel_slack > 1e-3  # tight on one side only (kappa > 1)
            assert math.isnan(check.cross_entropy.lhs)  # CE rows do not apply to this loss


def test_linear_training_and_kernel_bounds_are_equalities_at_eigenvectors(nets):
    """r_0 = top eigenvector: L_t = (1 - eta lam_max / n)^2t L_0, the lower bound; r_0 = bottom
    eigenvector: the upper bound. Likewise r^T Theta^-1 r hits ||r||^2 / lam_max or / lam_min."""
    with jax.enable_x64(True):
        net, params, batch = _case(nets, "mlp_tanh", 2)
        sp, top, bottom = _eigvecs(net, params, batch, "layers")
        f0 = theory.jacobian(net, params, batch)[0].reshape(-1)
        for v, tight, loose in ((top, "lower", "upper"), (bottom, "upper", "lower")):
            lt = theory.check_linear_training(net, params, batch, targets=f0 - 3.0 * v, steps=10,
                                              simulate="jacobian")
            assert theory.holds(lt, TOL)
            assert np.abs(getattr(lt, tight).rel_slack).max() < 1e-9
            assert getattr(lt, loose).rel_slack.min() > 1e-3
            gen = theory.check_generalization(net, params, batch, output="all",
                                              targets=f0 - 3.0 * v)
            assert theory.holds(gen, TOL)
            quad = gen.quad_lower if tight == "lower" else gen.quad_upper
            assert abs(quad.rel_slack) < 1e-9


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("kind", ["mlp_tanh", "cnn_bn"])
def test_formula_matches_gradient_descent_on_the_linearised_network(nets, kind):
    """r_t = (I - eta Theta / n)^t r_0 against GD on jax.linearize of the network (autodiff, no
    Jacobian), at several step sizes including a divergent one (the bounds hold for any eta)."""
    with jax.enable_x64(True):
        net, params, batch = _case(nets, kind, 0)
        sp = theory.spectrum(theory.ntk_matrix(net, params, batch))
        n = batch[0].shape[0]
        for scale in (0.3, 1.0, 1.6, 2.2):
            lt = theory.check_linear_training(net, params, batch, eta=scale * n / sp.lam_max,
                                              steps=15, simulate="linearize")
            assert theory.holds(lt, TOL), (scale, _violations(lt))
            assert not math.isnan(lt.formula.lhs[-1])
            assert np.isnan(lt.upper_M.lhs).all() == (scale > 1.0)  # M rows: eta <= n / lam_max
            assert (lt.loss[-1] < lt.loss[0]) == (scale < 2.0)


def test_real_network_training_departs_from_the_linearised_at_second_order(nets):
    """One GD step: |L_1(real) - L_1(linearised)| = O(eta^2), halving eta divides it by ~4."""
    with jax.enable_x64(True):
        net, params, batch = _case(nets, "mlp_tanh", 1)
        sp = theory.spectrum(theory.ntk_matrix(net, params, batch))
        gaps = []
        for eta in (0.02 * batch[0].shape[0] / sp.lam_max, 0.01 * batch[0].shape[0] / sp.lam_max):
            real, lin = (theory.gd_trajectory(net, params, batch, eta=eta, steps=1, linearized=z)
                         for z in (False, True))
            np.testing.assert_allclose(real.loss[0], lin.loss[0], rtol=1e-12)
            gaps.append(abs(real.loss[1] - lin.loss[1]))
        assert 3.5 < gaps[0] / gaps[1] < 4.5, gaps


def test_singular_ntk():
    """More outputs than parameters (a linear model, 18 outputs, 6 parameters): Theta is singular,
    kappa infinite; the spectral bounds stay true, the kernel-regression rows are skipped."""
    apply = lambda p, x: x @ p["dense"]["kernel"]
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(2, K)))}}
        batch = (jnp.asarray(rng.normal(size=(6, 2))), jnp.asarray(rng.integers(0, K, 6),
                                                                   jnp.int32))
        sp = theory.spectrum(theory.ntk_matrix(apply, params, batch))
        assert sp.size == 18 and abs(sp.lam_min) < 1e-12 * sp.lam_max
        for check in (theory.check_grad_norm(apply, params, batch),
                      theory.check_linear_training(apply, params, batch, steps=5),
                      theory.check_generalization(apply, params, batch, output="all")):
            assert theory.holds(check, TOL), _violations(check)
        gen = theory.check_generalization(apply, params, batch, output="all")
        assert gen.term == math.inf and all(math.isnan(b.lhs) for b in theory.bounds(gen))
        obj = theory.check_objective(apply, params, batch, output="all")
        assert theory.holds(obj, TOL) and math.isnan(obj.distance_sqrt.lhs)


# ----------------------------------------------------------------------------- objective

def test_objective_terms_are_the_hnas_objective(nets):
    with jax.enable_x64(True):
        net, params, batch = _case(nets, "mlp_tanh", 0)
        gram = theory.ntk_matrix(net, params, batch, output="label")
    for t, c, scale in ((0.0, -2.0, "linear"), (0.3, -4.0, "linear"), (0.7, 0.0, "log")):
        terms = theory.objective_terms(gram, t, c, s=50.0, nu_scale=scale)
        ref = hnas.objective(np.array([ntk.trace_norm(gram)]),
                             np.array([ntk.condition_number(gram)]), t, c, 50.0, scale)[0]
        assert math.isclose(terms.objective, ref, rel_tol=1e-12)
        assert math.isclose(terms.trainability + terms.generalization, terms.objective,
                            rel_tol=1e-12)


# ----------------------------------------------------------------------------- helpers, CLI

def test_bound_and_holds():
    b = theory.bound("x", 1.0, 2.0)
    assert (b.slack, b.rel_slack) == (1.0, 0.5) and theory.holds(b)
    assert not theory.holds(theory.bound("x", 2.0, 1.0))
    assert theory.holds(theory.bound("x", 1.0, 1.0 + 1e-12, "=="))
    assert not theory.holds(theory.bound("x", 1.0, 1.1, "=="))
    assert theory.holds(theory.bound("x", np.nan, np.nan))  # skipped
    assert not theory.holds(theory.bound("x", np.nan, 1.0))
    assert theory.bound("x", 3.0, math.inf).rel_slack == 1.0
    arr = theory.bound("x", np.array([1.0, 2.0]), np.array([2.0, 2.0]))
    assert theory.worst(arr).rel_slack == 0.0
    with pytest.raises(ValueError):
        theory.bound("x", 1.0, 2.0, "<")


def test_cli_theory(capsys):
    from jhnas.cli import main
    args = ["theory", "--arch", "mlp", "--batch-size", "4", "--image-size", "4", "--width", "6",
            "--steps", "5", "--hessian-max", "0"]
    assert main(args + ["--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "MLP 48-6-6-10" in out and "VIOLATED" not in out
    names = {line.split()[1] for line in out.splitlines()[3:]}
    assert {"upper", "cross_entropy", "hvp", "hessian", "formula", "quad_upper",
            "distance_kappa_over_M", "identity"} <= names
    assert sum(line.endswith(" ok") for line in out.splitlines()) == 41
    skipped = [line for line in out.splitlines() if "skipped" in line]  # the dense Hessian
    assert len(skipped) == 2
    assert all(line.endswith("parameters, more than hessian_max=0") and "skipped: " in line
               for line in skipped)
    # an impossible tolerance (every inequality must have 100 % relative slack) fails: exit 1
    assert main(args + ["--tol", "-1"]) == 1
    assert "VIOLATED" in capsys.readouterr().out
    assert main(["theory", "--arch", "|bad|"]) == 2
    assert main(["theory", "--arch", "mlp", "--image-size", "5"]) == 2
