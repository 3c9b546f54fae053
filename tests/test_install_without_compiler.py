"""Installing without a C++ compiler gives a working package on the pure-JAX path.

The compiled kernels are an ``optional`` extension (setup.py): where ``CC``/``CXX`` fail,
the wheel must still build, hold no compiled library, import, say that the kernels are not
available and sample correctly. The wheel is built from a copy of the tracked sources
(never in the working tree, whose in-place library a build could pick up) with the
compiler replaced by ``/bin/false``, installed into a directory of its own, and run in a
fresh interpreter whose ``sys.path`` holds that directory first. About 30 s.
"""

import os
import pathlib
import shutil
import site as site_packages
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMOKE = """
import jax, jax.numpy as jnp, numpy as np, stn_jax
assert stn_jax.__file__.startswith({site!r}), stn_jax.__file__
status = stn_jax.native_status()
assert not status.available, "the wheel was built without a compiler, yet kernels load"
assert "not built" in status.reason, status.reason
U = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4, 1)
# Identity, then half a pixel to the right (align_corners=False): x in pixels + 0.5.
V = stn_jax.warp(U, jnp.eye(2, 3, dtype=jnp.float32))
np.testing.assert_array_equal(V, U)
grid = stn_jax.make_grid(jnp.array([[1.0, 0.0, 0.25], [0.0, 1.0, 0.0]]), (3, 4))
expected = np.arange(12.0).reshape(3, 4) + 0.5
expected[:, -1] = (np.arange(3) * 4 + 3) * 0.5  # the last half-tap is outside: zeros
np.testing.assert_allclose(stn_jax.sample(U, grid)[..., 0], expected, rtol=1e-6)
g = jax.grad(lambda u: jnp.sum(stn_jax.sample(u, grid)))(U)
assert np.all(np.isfinite(g))
assert "StnBilinear" not in jax.jit(stn_jax.sample).lower(U, grid).as_text()
print("pure-JAX path OK; native available:", stn_jax.native_available())
"""


def _copy_sources(dest: pathlib.Path) -> None:
  """The tracked files a wheel needs, without any built library or cache."""
  for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
    shutil.copy(ROOT / name, dest / name)
  ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
  for name in ("csrc", "stn_jax"):
    shutil.copytree(ROOT / name, dest / name, ignore=ignore)


def test_wheel_built_without_a_compiler_samples_on_the_pure_jax_path(tmp_path):
  src, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
  src.mkdir()
  _copy_sources(src)
  env = dict(os.environ, CC="/bin/false", CXX="/bin/false", PIP_NO_INPUT="1")
  env.pop("STN_JAX_NATIVE_LIBRARY", None)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  build = subprocess.run(
    [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert build.returncode == 0, f"pip wheel failed without a compiler:\n{build.stderr[-5000:]}"
  (wheel,) = dist.glob("stn_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "stn_jax/__init__.py" in names
  assert not [n for n in names if n.endswith((".so", ".pyd"))], names
  install = subprocess.run(
    [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert install.returncode == 0, install.stderr[-5000:]
  # -S: no site processing, so no .pth file runs; an editable install of stn_jax in this
  # environment (a .pth import hook) would otherwise find the working tree's compiled
  # library for the wheel's package. The environment's packages (jax) come by PYTHONPATH.
  path = os.pathsep.join([str(site), *site_packages.getsitepackages()])
  smoke = subprocess.run(
    [sys.executable, "-S", "-c", SMOKE.format(site=str(site))],
    env=dict(env, PYTHONPATH=path),
    cwd=tmp_path,  # not the repository root, whose stn_jax would shadow the wheel's
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert smoke.returncode == 0, f"smoke test failed:\n{smoke.stdout}\n{smoke.stderr[-5000:]}"
  assert "pure-JAX path OK; native available: False" in smoke.stdout
