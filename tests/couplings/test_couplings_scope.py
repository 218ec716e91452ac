"""Couplings over a mesh: global scope pairs as one device, local scope pairs per shard; host calls.

The multi-device checks run in a subprocess with 4 forced host devices; each
compares against the plain coupling run on one device in the same process
(an independent computation: no mesh, no sharding constraints, no shard_map).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm import config as config_lib
from fm import recipe
from fm.couplings import base, host, host_auction

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = r"""
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import fm
from fm import metrics
from fm.couplings import exact, host_auction

assert jax.device_count() == 4
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
one = jax.devices()[0]
calls = []
def counting(c):
  calls.append(1)
  return host_auction.host_auction(c)
exact._HOST_POINTS["host_auction"] = exact._points_solver(counting)

# 1. The SIGABRT: a host exact-OT solve inside a program over 4 devices (inputs replicated).
x = jax.random.normal(jax.random.PRNGKey(0), (512, 2))
y = jax.random.normal(jax.random.PRNGKey(1), (512, 2)) + 1.0
rep = NamedSharding(mesh, P())
w2_four = float(jax.jit(metrics.w2)(jax.device_put(x, rep), jax.device_put(y, rep)))
w2_one = float(jax.jit(metrics.w2)(jax.device_put(x, one), jax.device_put(y, one)))
assert abs(w2_four - w2_one) <= 1e-6 * w2_one, (w2_four, w2_one)

# 2. Global scope on a sharded batch == the plain coupling on one device.
key = jax.random.PRNGKey(3)
x0 = jax.random.normal(jax.random.PRNGKey(4), (64, 3))
x1 = jax.random.normal(jax.random.PRNGKey(5), (64, 3)) * 2.0 + 1.0
shards = NamedSharding(mesh, P("data"))
SCOPED, WITHIN_CLASS = json.loads(sys.argv[1]), json.loads(sys.argv[2])   # [[name, kwargs], ...]
for name, kw in SCOPED:
  plain = jax.jit(fm.couplings.make(name, **kw))
  scoped = jax.jit(fm.couplings.make(name, mesh=mesh, **kw))
  calls.clear()
  a0, a1, _ = plain(key, jax.device_put(x0, one), jax.device_put(x1, one))
  a0, a1 = fm.couplings.apply(a0, a1, x0, x1)
  n_plain = len(calls)
  b0, b1, info = scoped(key, jax.device_put(x0, shards), jax.device_put(x1, shards))
  assert b1.sharding.is_equivalent_to(shards, 1), (name, b1.sharding)
  b0, b1 = jax.jit(fm.couplings.apply)(b0, b1, jax.device_put(x0, shards), jax.device_put(x1, shards))
  assert b1.sharding.is_equivalent_to(shards, 2), (name, b1.sharding)
  np.testing.assert_array_equal(np.asarray(a0), np.asarray(b0))
  np.testing.assert_array_equal(np.asarray(a1), np.asarray(b1))
  if name == "exact":
    assert n_plain == 1 and len(calls) == 2, calls   # the host solver ran once for 4 devices

  # 3. Local scope == the plain coupling on each shard with key fold_in(key, i).
  local = jax.jit(fm.couplings.make(name, mesh=mesh, scope="local", **kw))
  c0, c1, cinfo = local(key, jax.device_put(x0, shards), jax.device_put(x1, shards))
  for i in range(4):   # each device paired within its own shard
    assert (np.asarray(c0)[16 * i:16 * (i + 1)] // 16 == i).all() and (np.asarray(c1)[16 * i:16 * (i + 1)] // 16 == i).all()
  c0, c1 = fm.couplings.apply(c0, c1, x0, x1)
  costs = []
  for i in range(4):
    s = slice(16 * i, 16 * (i + 1))
    d0, d1, dinfo = plain(jax.random.fold_in(key, i), jax.device_put(x0[s], one), jax.device_put(x1[s], one))
    d0, d1 = fm.couplings.apply(d0, d1, x0[s], x1[s])
    np.testing.assert_array_equal(np.asarray(c0)[s], np.asarray(d0))
    np.testing.assert_array_equal(np.asarray(c1)[s], np.asarray(d1))
    costs.append(float(dinfo["cost_after"]))
  np.testing.assert_allclose(float(cinfo["cost_after"]), np.mean(costs), rtol=1e-6)

# 4. condition="within_class": the labels travel with x1; global == one device, local == per shard.
y1 = jnp.asarray(np.arange(64) % 3)
for name, kw in WITHIN_CLASS:
  plain = jax.jit(fm.couplings.make(name, condition="within_class", **kw))
  a = plain(key, jax.device_put(x0, one), jax.device_put(x1, one), jax.device_put(y1, one))
  for scope in ("global", "local"):
    b = jax.jit(fm.couplings.make(name, mesh=mesh, scope=scope, condition="within_class", **kw))(
        key, jax.device_put(x0, shards), jax.device_put(x1, shards), jax.device_put(y1, shards))
    if scope == "global":
      np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
      np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
      continue
    for i in range(4):
      s = slice(16 * i, 16 * (i + 1))
      d = plain(jax.random.fold_in(key, i), jax.device_put(x0[s], one), jax.device_put(x1[s], one),
                jax.device_put(y1[s], one))
      np.testing.assert_array_equal(np.asarray(b[1])[s], np.asarray(d[1]) + 16 * i)
      np.testing.assert_array_equal(np.asarray(b[0])[s], np.asarray(d[0]) + 16 * i)
print("OK")
"""


def _run_on_four_devices(scoped, within_class):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  res = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(scoped), json.dumps(within_class)], env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]


def test_scopes_on_four_devices():
  """The host exact solve (a callback under the mesh), an OTT Sinkhorn and the partial plan drawn with
  replacement (random draws on sharded arrays): each scope wrapper's three kinds of coupling."""
  _run_on_four_devices([["exact", {}], ["sinkhorn", {}], ["partial", {"mass": 0.7, "replace": True}]],
                       [["exact", {}], ["partial", {"mass": 0.7}]])


@pytest.mark.slow
def test_scopes_on_four_devices_other_couplings():
  """The same checks for the other OTT plans (sb is a Sinkhorn at epsilon = 2 sigma^2, unbalanced
  another OTT solve) and the within-class Sinkhorn: the code paths test_scopes_on_four_devices runs
  by default, with other plans inside the same `Scoped` wrapper (~30 s on a loaded 2-core machine)."""
  _run_on_four_devices([["sb", {"sigma": 0.5}], ["unbalanced", {"reg_m": 0.5}]], [["sinkhorn", {}]])


def test_scope_is_validated():
  with pytest.raises(ValueError, match="scope 'pairwise'.*global, local"):
    fm.couplings.make("exact", scope="pairwise")
  assert isinstance(fm.couplings.make("exact", scope="local"), fm.couplings.Exact)  # no mesh: plain
  config = config_lib.load(os.path.join(ROOT, "configs", "toy2d.py"))
  config = config_lib.apply_overrides(config, [("coupling.scope", "everywhere")])
  with pytest.raises(config_lib.ConfigError, match="everywhere"):
    recipe.resolve(config)


def test_host_call_numpy_in_numpy_out_and_vmap():
  seen = []

  def fn(a, b):
    seen.append((type(a), type(b)))
    return (a + b).astype(np.int32)

  f = jax.jit(lambda a, b: host.host_call(fn, jax.ShapeDtypeStruct((3,), jnp.int32), a, b))
  np.testing.assert_array_equal(f(jnp.arange(3.0), jnp.ones(3)), [1, 2, 3])
  assert seen[-1] == (np.ndarray, np.ndarray)  # never jax arrays: no device_put inside the callback
  batched = jax.vmap(lambda a: host.host_call(fn, jax.ShapeDtypeStruct((3,), jnp.int32), a, jnp.ones(3)))
  np.testing.assert_array_equal(batched(jnp.stack([jnp.zeros(3), jnp.ones(3)])), [[1, 1, 1], [2, 2, 2]])


@pytest.mark.parametrize("d", [2, 40])
def test_sqdist_host_matches_float64(d):
  rng = np.random.default_rng(d)
  x0, x1 = rng.standard_normal((70, d)), rng.standard_normal((50, d)) + 0.5
  ref = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)
  got = base.sqdist_host(x0.astype(np.float32), x1.astype(np.float32), block_elems=999)  # many blocks
  assert got.dtype == np.float32 and got.shape == (70, 50)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.max())


def test_host_auction_reads_float32_in_place_same_result():
  rng = np.random.default_rng(0)
  c32 = rng.random((200, 200)).astype(np.float32) + 1e3
  np.testing.assert_array_equal(host_auction.host_auction(c32), host_auction.host_auction(c32.astype(np.float64)))
  with pytest.raises(ValueError, match="finite"):
    host_auction.host_auction(np.array([[0.0, np.nan], [1.0, 0.0]], np.float32))


def test_assignment_points_is_optimal():
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x0, x1 = rng.standard_normal((100, 3072), np.float32), rng.uniform(-1, 1, (100, 3072)).astype(np.float32)
  perm = np.asarray(jax.jit(fm.couplings.assignment_points)(x0, x1))
  c = ((x0.astype(np.float64)[:, None] - x1[None]) ** 2).sum(-1)
  r, s = linear_sum_assignment(c)
  assert c[np.arange(100), perm].sum() <= c[r, s].sum() * (1 + 1e-7)
