"""`fm import-torchcfm`: a TorchCFM CIFAR-10 checkpoint as an fm workdir.

TorchCFM's `train_cifar10.py` saves `{"net_model", "ema_model", "optim",
"sched", "step"}` with `torch.save`; its released files
(`otcfm_cifar10_weights_step_400000.pt`, ...) are read here WITHOUT torch
(`fm.io.torch_pickle`). Both state dicts are mapped into fm's UNet by
`fm.models.unet.from_torch` (names as TorchCFM's `UNetModelWrapper`; a DDP
"module." prefix is stripped). The workdir gets `config.json`, `source.json` and
one orbax checkpoint at the file's step whose `params` and `ema_params` are the
two networks; the Adam moments are not imported (a fresh optimizer state is
stored, so continuing training from it is not TorchCFM's continuation).
`fm sample` and `fm eval` then use it like any fm run (EMA by default).
"""
from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fm import config as config_lib
from fm.io import files, torch_pickle

__all__ = ["import_checkpoint"]


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def import_checkpoint(path: str, config: ml_collections.ConfigDict, workdir: str,
                      image_shape: tuple[int, int, int] = (32, 32, 3)) -> dict:
  """Writes an fm workdir holding TorchCFM checkpoint `path`; returns a summary dict.

  Raises `ConfigError` (one sentence) for a bad file, a model that is not the
  UNet, state dicts that do not fit the config's UNet, or a non-empty workdir.
  """
  from fm.models import unet  # pylint: disable=g-import-not-at-top
  from fm import recipe  # pylint: disable=g-import-not-at-top
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  from fm.data.base import Source  # pylint: disable=g-import-not-at-top
  config = recipe.resolve(config)
  if config.model.name != "unet":
    raise config_lib.ConfigError(f"TorchCFM checkpoints hold an ADM UNet, but config model.name is "
                                 f"{config.model.name!r}; use configs/cifar10.py")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"checkpoint file {path!r} does not exist")
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise config_lib.ConfigError(f"workdir {workdir!r} exists and is not an empty directory; "
                                 f"import into a new workdir")
  try:
    obj = torch_pickle.load(path)
    sds = {k: torch_pickle.state_dict(obj, key=k) for k in ("net_model", "ema_model")}
  except ValueError as e:
    raise config_lib.ConfigError(f"cannot import {path!r}: {e}") from e
  step = int(obj.get("step", 0)) if isinstance(obj, dict) else 0

  run = recipe.build(config, image_shape)
  try:
    params = unet.from_torch(run.model, sds["net_model"], image_shape=image_shape)
    ema = unet.from_torch(run.model, sds["ema_model"], image_shape=image_shape)
  except ValueError as e:
    raise config_lib.ConfigError(f"checkpoint {path!r} does not fit the config's UNet: {e}") from e
  state = run.init_state()
  as_jnp = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)
  params, ema = as_jnp(params), as_jnp(ema)
  state = state.replace(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema,
                        opt_state=run.optimizer.init(params))
  config.train.steps = max(step, 1)

  # Atomic: everything is written to a hidden temporary workdir beside the target, which is renamed
  # into place when complete; a failed import removes it, and a killed one leaves no workdir behind.
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(os.path.abspath(workdir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(workdir))}.importing-", dir=parent)
  try:
    files.write_json(os.path.join(tmp, "config.json"), config_lib.to_dict(config), sort_keys=True)
    sha = _sha256(path)
    recipe.write_source_info(tmp, Source(
        name="images", shape=tuple(image_shape), batch_fn=None, data=None, sample_x0=None, kind="images",
        description=f"imported TorchCFM checkpoint {os.path.basename(path)} (sha256 {sha[:16]}); "
                    f"trained by TorchCFM on its CIFAR-10 data"))
    ckpt = checkpoint.Checkpointer(tmp)
    ckpt.save(step, state)
    ckpt.close()
    os.rename(tmp, workdir)   # replaces an empty directory; fails (nothing moved) if one appeared meanwhile
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  n_params = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(params)))
  return {"workdir": workdir, "step": step, "params": n_params, "sha256": sha}
