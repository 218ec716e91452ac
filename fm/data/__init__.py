"""Data sources, one registry: `make(name, batch_size, **options) -> Source`.

    src = fm.data.make("toy", batch_size=512, task="8gaussians->moons")
    src = fm.data.make("images", batch_size=128, path="../shared/data/cifar10-jpeg.tar.gz")
    x0, x1 = src.batch_fn(key, src.data)          # inside the jitted train step

Each source module defines `check_options(num_classes=0, **options)` (cheap:
names and ranges, no loading; ValueError with one sentence) and
`make_source(batch_size, num_classes=0, **options)`; `num_classes > 0` asks for
labelled batches `(x0, x1, y1)` (a conditional run).
The config's `data` section is `{"name": ..., **options}`; a config without
`data.name` is a toy config (the 2D half predates the registry). Modules are
imported on first use, so `import fm` never imports an image decoder.
"""
from __future__ import annotations

import importlib
from typing import Any

from fm.data.base import Source

__all__ = ["Source", "NAMES", "KINDS", "make", "check", "identity", "example_shape", "split_options",
           "x0_sampler"]

_MODULES = {"toy": "fm.data.toys", "images": "fm.data.images"}  # image folders: fm.data.folder
NAMES = tuple(_MODULES)
KINDS = {"toy": "points", "images": "images"}   # `Source.kind` of each source, known without building it


def __getattr__(name: str):
  """`fm.data.toys`, `fm.data.images`, ... imported on first attribute access."""
  if name in ("base", "toys", "images", "folder", "pairs"):
    return importlib.import_module(f"fm.data.{name}")
  raise AttributeError(f"module 'fm.data' has no attribute {name!r}")


def _module(name: str):
  if name not in _MODULES:
    raise ValueError(f"unknown data source {name!r}; valid sources: {', '.join(NAMES)}")
  return importlib.import_module(_MODULES[name])


def split_options(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  """A config's `data` section -> (source name, its options)."""
  data = dict(data)
  name = data.pop("name", "toy")
  return name, data


def check(name: str, num_classes: int = 0, **options: Any) -> None:
  """ValueError (one sentence) unless `options` are valid for source `name`.

  `num_classes > 0`: a conditional run; sources that can tell cheaply (toys)
  also check that the data have that many classes.
  """
  _module(name).check_options(num_classes=num_classes, **options)


def identity(name: str, **options: Any) -> str | None:
  """The content key (sha256) of the data the options name, without decoding it; None for generated data.

  A module may define `identity(**options)`; generated sources (toys) have none.
  """
  module = _module(name)
  return module.identity(**options) if hasattr(module, "identity") else None


def example_shape(name: str, **options: Any) -> tuple[int, ...] | None:
  """The shape of one example without loading the data, where a module can tell cheaply (else None).

  A module may define `example_shape(**options)`; models are checked against it
  before the data is loaded (`fm.recipe.load_data`).
  """
  module = _module(name)
  return module.example_shape(**options) if hasattr(module, "example_shape") else None


def make(name: str, batch_size: int, num_classes: int = 0, **options: Any) -> Source:
  """Builds the named source; its arrays (if any) are host or device arrays in `src.data`.

  `num_classes > 0` (a conditional run): the source draws labelled batches
  `(x0, x1, y1)`; ValueError (one sentence) if the data have no labels or
  another number of classes.
  """
  module = _module(name)
  module.check_options(num_classes=num_classes, **options)
  return module.make_source(batch_size, num_classes=num_classes, **options)


def x0_sampler(name: str, shape: tuple[int, ...], **options: Any):
  """`sample_x0(key, n) -> [n, *shape]` of a source without loading its data.

  A module may define `x0_sampler(shape, **options)`; otherwise x0 ~ N(0, I).
  """
  module = _module(name)
  if hasattr(module, "x0_sampler"):
    return module.x0_sampler(shape, **options)
  import jax  # pylint: disable=g-import-not-at-top
  shape = tuple(shape)
  return lambda key, n: jax.random.normal(key, (n, *shape))
