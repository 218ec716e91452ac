"""SF2M (ODE vs SDE) vs SB-CFM, and 1-step MeanFlow vs dopri5 I-CFM/OT-CFM and 2-rectified flow, on 2D toys.

  .venv/bin/python experiments/sde/toy.py --out experiments/sde/results.json [--steps 5000] [--batch 256]

Every method trains the same MLP body (3x64 SELU; sf2m with 2x outputs, meanflow with a
second time input) with the same optimiser (AdamW 1e-3, wd 0.01, EMA 0.999), batch and
number of steps on 8gaussians->moons (fresh samples each step); 2-rectified flow gets a
second run of the same length on 10 000 teacher pairs (dopri5). W2 is exact, between 1000
generated points and 1000 held-out targets (two target draws are themselves at ~0.3).
The score part trains sf2m on N(0, I) -> N(mu, Sigma), where the SB marginals are Gaussian
in closed form, and compares the score head with the analytic score.
Writes a JSON of every number and prints the markdown tables of docs/sde.md and docs/meanflow.md.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import fm
from fm import couplings, meanflow, metrics, paths, sf2m, stochastic, timesteps
from fm.data import toys
from fm.solvers import integrate, integrate_average, integrate_sde
from fm.train import state as state_lib
from fm.train.step import make_multi_step

TASK = ("8gaussians", "moons")
MU = np.array([2.0, -1.0])
SIGMA = np.array([[1.5, 0.6], [0.6, 0.5]])


def toy_batch(batch):
  def batch_fn(key, data):
    del data
    k0, k1 = jax.random.split(key)
    return toys.sample(TASK[0], k0, batch), toys.sample(TASK[1], k1, batch)
  return batch_fn


def gaussian_batch(batch):
  chol = jnp.asarray(np.linalg.cholesky(SIGMA), jnp.float32)

  def batch_fn(key, data):
    del data
    k0, k1 = jax.random.split(key)
    return (jax.random.normal(k0, (batch, 2)),
            jnp.asarray(MU, jnp.float32) + jax.random.normal(k1, (batch, 2)) @ chol.T)
  return batch_fn


def train(model, loss, batch_fn, steps, seed=0, init_kwargs=None):
  """EMA params after `steps` AdamW steps of `loss(apply_fn, params, key, x0, x1)`; and seconds."""
  optimizer = state_lib.make_optimizer(1e-3, steps, "adamw", "constant", 0, 0.0, 0.01)
  init_kwargs = init_kwargs or {}
  state = state_lib.create(lambda k: model.init(k, jnp.zeros((1,)), jnp.zeros((1, 2)), **init_kwargs),
                           optimizer, seed)

  def loss_fn(params, key, x0, x1):
    return loss(lambda p, t, x, *a: model.apply(p, t, x, **_extra(a)), params, key, x0, x1)
  multi = jax.jit(make_multi_step(loss_fn, optimizer, batch_fn, 0.999), donate_argnums=0)
  start = time.time()
  done = 0
  while done < steps:
    n = min(500, steps - done)
    state, stats = multi(state, jnp.asarray(n, jnp.int32))
    assert not bool(stats["failed"]), "non-finite step"
    done += n
  jax.block_until_ready(state.params)
  return state.ema_params, time.time() - start


def _extra(a):
  return {"t2": a[0]} if a else {}


def couple_then(method, objective):
  """A loss that pairs with the method's coupling, then applies `objective` to the pairs."""
  def loss(apply_fn, params, key, x0, x1):
    k_c, k = jax.random.split(key)
    i0, i1, info = method.coupling(k_c, x0, x1)
    x0, x1 = couplings.apply(i0, i1, x0, x1)
    value, aux = objective(apply_fn, params, k, x0, x1)
    return value, {**aux, **info}
  return loss


def w2(x, y):
  return float(metrics.w2(jnp.asarray(x), jnp.asarray(y)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="experiments/sde/results.json")
  ap.add_argument("--steps", type=int, default=5000)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--only", default="", help="comma list of parts: sb,meanflow,score,meanflow_extra")
  args = ap.parse_args()
  parts = set(args.only.split(",")) if args.only else {"sb", "meanflow", "score", "meanflow_extra"}
  steps, batch = args.steps, args.batch
  key_eval = jax.random.PRNGKey(1234)
  x0 = toys.sample(TASK[0], jax.random.fold_in(key_eval, 0), 1000)
  target = np.asarray(toys.sample(TASK[1], jax.random.fold_in(key_eval, 1), 1000))
  res = {"steps": steps, "batch": batch, "task": "->".join(TASK)}
  mlp = dict(width=64, depth=3, activation="selu")

  def ode_rows(name, v, solvers=(("dopri5", None), ("euler", 1), ("euler", 10), ("euler", 100))):
    rows = []
    for solver, n in solvers:
      f = jax.jit(lambda x: integrate(v, x, solver, steps=n) if n else integrate(v, x, "dopri5", rtol=1e-5, atol=1e-5))
      x1, info = f(x0)
      rows.append({"method": name, "sampler": solver if n is None else f"{solver} {n}",
                   "nfe": int(info["nfe"]), "w2": w2(x1, target)})
      print(rows[-1], flush=True)
    return rows

  if "sb" in parts:
    rows = []
    sigma = 1.0
    for sig in (sigma,):
      model = fm.models.make("mlp", outputs=2, **mlp)
      method = fm.methods.make("sbcfm", sigma=sig)
      objective = sf2m.SF2MLoss(paths.make("sb", sigma=sig), timesteps.make("uniform"))
      params, secs = train(model, couple_then(method, objective), toy_batch(batch), steps)
      res[f"sf2m_train_s"] = secs

      def flow_and_score(t, x, params=params):
        return sf2m.split_flow_score(model.apply(params, jnp.full((x.shape[0],), t), x))
      v = lambda t, x: flow_and_score(t, x)[0]
      rows += ode_rows("sf2m (ODE, flow head)", v)
      for noise in (1.0, 0.5):
        sde = stochastic.sf2m_sde(flow_and_score, sig, noise)
        for solver in ("euler_maruyama", "stochastic_heun"):
          for n in (10, 20, 50, 100):
            if solver == "stochastic_heun" and n == 100:
              continue
            f = jax.jit(lambda x: integrate_sde(sde.drift, sde.diffusion, x, jax.random.PRNGKey(7), solver, steps=n))
            x1, info = f(x0)
            rows.append({"method": f"sf2m (SDE, g = {noise:g} sigma)", "sampler": f"{solver} {n}",
                         "nfe": int(info["nfe"]), "w2": w2(x1, target)})
            print(rows[-1], flush=True)
      model = fm.models.make("mlp", **mlp)
      method = fm.methods.make("sbcfm", sigma=sig)
      params, secs = train(model, method.loss, toy_batch(batch), steps)
      res["sbcfm_train_s"] = secs
      rows += ode_rows("sbcfm", lambda t, x, params=params: model.apply(params, jnp.full((x.shape[0],), t), x))
    res["sb"] = rows

  if "meanflow" in parts:
    rows = []
    for name in ("icfm", "otcfm"):
      model = fm.models.make("mlp", **mlp)
      method = fm.methods.make(name)
      params, secs = train(model, method.loss, toy_batch(batch), steps)
      res[f"{name}_train_s"] = secs
      rows += ode_rows(name, lambda t, x, params=params: model.apply(params, jnp.full((x.shape[0],), t), x))
    # 1-rectified flow, then 2-rectified flow on 10k dopri5 teacher pairs (a second run of `steps`)
    model = fm.models.make("mlp", **mlp)
    params1, secs1 = train(model, fm.methods.make("rf").loss, toy_batch(batch), steps)
    v1 = lambda t, x: model.apply(params1, jnp.full((x.shape[0],), t), x)
    z0 = toys.sample(TASK[0], jax.random.PRNGKey(99), 10_000)
    z1, _ = jax.jit(lambda z: integrate(v1, z, "dopri5", rtol=1e-5, atol=1e-5))(z0)
    pairs = (z0, z1)

    def pair_batch(key, data):
      del data
      i = jax.random.randint(key, (batch,), 0, 10_000)
      return pairs[0][i], pairs[1][i]
    params2, secs2 = train(model, fm.methods.make("rf").loss, pair_batch, steps)
    res["rf2_train_s"] = secs1 + secs2
    rows += ode_rows("1-rectified flow", v1, (("dopri5", None), ("euler", 1)))
    rows += ode_rows("2-rectified flow", lambda t, x: model.apply(params2, jnp.full((x.shape[0],), t), x),
                     (("dopri5", None), ("euler", 1), ("euler", 2)))
    for tag, times, p in (("ImageNet (m -0.4, s 1, 75 % r=t, p 1)", meanflow.TimePairSampler(-0.4, 1.0, 0.75), 1.0),
                          ("CIFAR (m -2, s 2, 25 % r=t, p 0.75)", meanflow.TimePairSampler(-2.0, 2.0, 0.25), 0.75)):
      model = fm.models.make("mlp", second_time=True, **mlp)
      objective = meanflow.MeanFlowLoss(paths.make("linear", sigma=0.0), times, p=p, c=1e-3)
      params, secs = train(model, objective, toy_batch(batch), steps, init_kwargs={"t2": jnp.zeros((1,))})
      res[f"meanflow {tag} train_s"] = secs
      u = lambda t, x, h, params=params: model.apply(params, jnp.full((x.shape[0],), t), x,
                                                     t2=jnp.full((x.shape[0],), h))
      for n in (1, 2, 4):
        x1, info = jax.jit(lambda x: integrate_average(u, x, steps=n))(x0)
        rows.append({"method": f"meanflow {tag}", "sampler": f"meanflow {n}", "nfe": int(info["nfe"]),
                     "w2": w2(x1, target)})
        print(rows[-1], flush=True)
      rows += ode_rows(f"meanflow {tag} (r = t: its velocity)",
                       lambda t, x, params=params: model.apply(params, jnp.full((x.shape[0],), t), x,
                                                               t2=jnp.zeros((x.shape[0],))),
                       (("dopri5", None),))
    res["meanflow"] = rows

  if "meanflow_extra" in parts:   # the weighting power and a 4x budget (CIFAR time sampler)
    rows = []
    for tag, p, n_steps in (("p 0 (plain L2)", 0.0, steps), ("p 0.75, 4x steps", 0.75, 4 * steps)):
      model = fm.models.make("mlp", second_time=True, **mlp)
      objective = meanflow.MeanFlowLoss(paths.make("linear", sigma=0.0), meanflow.TimePairSampler(-2.0, 2.0, 0.25),
                                        p=p, c=1e-3)
      params, secs = train(model, objective, toy_batch(batch), n_steps, init_kwargs={"t2": jnp.zeros((1,))})
      u = lambda t, x, h, params=params: model.apply(params, jnp.full((x.shape[0],), t), x,
                                                     t2=jnp.full((x.shape[0],), h))
      for n in (1, 2, 4):
        x1, info = jax.jit(lambda x: integrate_average(u, x, steps=n))(x0)
        rows.append({"method": f"meanflow CIFAR sampler, {tag}", "sampler": f"meanflow {n}",
                     "nfe": int(info["nfe"]), "w2": w2(x1, target)})
        print(rows[-1], flush=True)
      rows += ode_rows(f"meanflow CIFAR sampler, {tag} (r = t: its velocity)",
                       lambda t, x, params=params: model.apply(params, jnp.full((x.shape[0],), t), x,
                                                               t2=jnp.zeros((x.shape[0],))), (("dopri5", None),))
    res["meanflow_extra"] = rows

  if "score" in parts:
    sig = 1.0
    model = fm.models.make("mlp", outputs=2, **mlp)
    method = fm.methods.make("sbcfm", sigma=sig)
    objective = sf2m.SF2MLoss(paths.make("sb", sigma=sig), timesteps.make("uniform"))
    params, _ = train(model, couple_then(method, objective), gaussian_batch(batch), steps)
    # population entropic plan between N(0, I) and N(MU, SIGMA) at epsilon = 2 sigma^2:
    # Cov(x0, x1) = C = (4 SIGMA + sigma^4 I)^{1/2} / 2 - sigma^2 / 2 I
    w, vecs = np.linalg.eigh(4 * SIGMA + sig**4 * np.eye(2))
    cross = 0.5 * (vecs * np.sqrt(w)) @ vecs.T - 0.5 * sig**2 * np.eye(2)
    rows = []
    for t in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95):
      mean = t * MU
      cov = ((1 - t) ** 2 * np.eye(2) + t**2 * SIGMA + t * (1 - t) * (cross + cross.T)
             + sig**2 * t * (1 - t) * np.eye(2))
      x = mean + np.random.default_rng(0).normal(size=(4000, 2)) @ np.linalg.cholesky(cov).T
      true = -(x - mean) @ np.linalg.inv(cov).T
      out = model.apply(params, jnp.full((4000,), t), jnp.asarray(x, jnp.float32))
      pred = np.asarray(sf2m.split_flow_score(out)[1]) * 2 / sig**2
      rel = float(np.sqrt(np.mean(np.sum((pred - true) ** 2, 1)) / np.mean(np.sum(true**2, 1))))
      rows.append({"t": t, "relative_rms_error": rel})
      print(rows[-1], flush=True)
    res["score"] = rows

  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
