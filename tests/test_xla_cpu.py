"""fm.xla_cpu: the CPU flag is added once, never over a user's choice, and is accepted by XLA."""
import os
import subprocess
import sys

from fm import xla_cpu


def test_apply_adds_flag_once_and_respects_user_and_opt_out(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_cpu.apply(env)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4 " + xla_cpu.FLAG
  assert not xla_cpu.apply(env)                       # already there: unchanged
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  assert not xla_cpu.apply(user) and user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
  off = {"FM_XLA_CPU_DEFAULTS": "0"}
  assert not xla_cpu.apply(off) and "XLA_FLAGS" not in off
  monkeypatch.setattr(xla_cpu, "_backends_started", lambda: True)
  late = {}
  assert not xla_cpu.apply(late) and "XLA_FLAGS" not in late


def test_flag_is_accepted_by_this_jaxlib():
  """An unknown XLA flag aborts the process: run a convolution with `import fm` first."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FM_XLA_CPU_DEFAULTS")}
  code = ("import os, fm, jax, jax.numpy as jnp; "
          "y = jax.lax.conv(jnp.ones((1, 1, 5, 5)), jnp.ones((1, 1, 3, 3)), (1, 1), 'SAME'); "
          "print(os.environ.get('XLA_FLAGS', ''), float(y.sum()))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[-1] == "169.0"
  import jaxlib  # pylint: disable=g-import-not-at-top
  if jaxlib.__version__.startswith(xla_cpu._VERSIONS):  # pylint: disable=protected-access
    assert xla_cpu.FLAG in out.stdout
