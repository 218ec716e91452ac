"""The jitted multi-step: a step is applied only if loss, gradient AND new parameters are finite."""
import jax
import numpy as np

from fm.data import toys
from fm import recipe
from fm.train import state as state_lib, step as step_lib
from train.helpers import tiny_config


def test_params_overflow_with_finite_gradients_is_not_applied():
  """lr = 1e39 is inf in float32: the first update overflows the parameters while loss and grads are finite."""
  run = recipe.build(tiny_config())
  optimizer = state_lib.make_optimizer(1e39, 100, "adam")
  loss_fn = recipe.loss_fn(run)
  source = toys.make_source(16, "gaussian->moons")
  fn = jax.jit(step_lib.make_multi_step(loss_fn, optimizer, source.batch_fn, 0.99))
  state = state_lib.create(lambda k: run.model.init(k, np.zeros((1,)), np.zeros((1, 2))), optimizer, 0)
  # The premise: the loss and gradient at this state are finite, the updated parameters are not.
  x0, x1 = source.batch_fn(jax.random.split(jax.random.fold_in(state.key, 0))[0], None)
  grads = jax.grad(lambda p: loss_fn(p, jax.random.PRNGKey(0), x0, x1)[0])(state.params)
  assert bool(step_lib.finite(grads))
  updates, _ = optimizer.update(grads, state.opt_state, state.params)
  assert not bool(step_lib.finite(jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)))
  before = jax.device_get(state)
  new, stats = fn(state, np.int32(5), None)
  assert bool(stats["failed"]) and int(stats["count"]) == 0 and int(new.step) == 0
  assert bool(step_lib.finite(new.params)) and bool(step_lib.finite(new.ema_params))
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(new.params), before.params)
