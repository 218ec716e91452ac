import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm


def test_mlp_matches_torchcfm_parameter_count_and_shapes():
  model = fm.models.make("mlp", dim=2, width=64, depth=3, activation="selu")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(5), jnp.zeros((5, 2)))
  n = sum(p.size for p in jax.tree_util.tree_leaves(params))
  # Linear(3, 64), Linear(64, 64) x 2, Linear(64, 2) as in TorchCFM's MLP(2, w=64, time_varying=True)
  assert n == 3 * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 2 + 2
  v = model.apply(params, jnp.linspace(0, 1, 5), jnp.ones((5, 2)))
  assert v.shape == (5, 2)
  # time is an input: changing t changes v
  v2 = model.apply(params, jnp.zeros(5), jnp.ones((5, 2)))
  assert not np.allclose(v, v2)
  # scalar t broadcasts, image-shaped inputs flatten
  img = fm.models.make("mlp", dim=12, width=8, depth=1)
  p = img.init(jax.random.PRNGKey(0), 0.5, jnp.zeros((2, 3, 2, 2)))
  assert img.apply(p, 0.5, jnp.zeros((2, 3, 2, 2))).shape == (2, 3, 2, 2)


def test_bad_model_arguments():
  with pytest.raises(ValueError, match="valid models: mlp"):
    fm.models.make("resnet")
  with pytest.raises(ValueError, match="unknown argument"):
    fm.models.make("mlp", widht=3)
  with pytest.raises(ValueError, match="valid: selu"):   # option values are checked by make()
    fm.models.make("mlp", activation="swish")
