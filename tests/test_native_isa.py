"""Every build of the compiled passes gives the same bits, on every kernel.

The passes are compiled twice (csrc/passes.h): for the baseline ISA, which every CPU runs
(ARM, x86 without AVX2), and for AVX2, which x86 machines pick; CPUs with AVX-512 also run
16-lane passes for the float32 bilinear forward and backward of one- and three-channel
images (csrc/bilinear_avx512.cc). The vector paths repeat the scalar loops' operations in
the same order (no FMA), so the builds must agree bit for bit.
``STN_JAX_NATIVE_ISA=baseline`` / ``avx2`` caps a process at that build; this test runs
the same calls in a process of each build and compares the bytes of ``V``, of both
gradients of ``sum(V * R)`` (together, and each alone) and of the JVP, for bilinear,
bicubic and nearest, images and volumes, float32 and float64, one, three, six and eleven
channels, every padding and ``align_corners``, with grids that hold NaN, infinite, huge
and exact-edge coordinates and images with NaN and infinite pixels, and bilinear with
pixel coordinates (the deformation fields' path) of -0.0 over pixels of -0.0, where the
sign a floor gives -0.0 shows in the sign of zero outputs. With the other tests (which
check this CPU's build against the pure-JAX reference and the float32 forward against an
emulation of its scalar loop), this puts the builds that other machines run under test
here.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELS = ("bilinear", "bicubic", "nearest")
PADDINGS = ("zeros", "border", "reflection")


def _cases():
  """(kernel, spatial dims, dtype, channels): one U and grid each, every mode inside."""
  for kernel in KERNELS:
    for dims in (2, 3):
      for dtype in ("float32", "float64"):
        # Bilinear's vector paths depend on the channels (1; 3 on AVX-512; 2-8 on AVX2 in
        # the forward and the grid cotangent, 6 in 256-bit lanes; 3 in the unrolled dU
        # scatter; more than 8 in the grid cotangent, eight at a time, 11 leaving a tail of
        # 3); the separable passes have no per-channel-count paths.
        for channels in (1, 3, 6, 11) if kernel == "bilinear" else (3,):
          yield kernel, dims, dtype, channels


def _inputs(dims: int, dtype: str, channels: int, seed: int):
  rng = np.random.default_rng(seed)
  size = (4, 5, 7)[-dims:]  # D, H, W: small, odd and even
  U = rng.normal(size=(2, *size, channels)).astype(dtype)
  U.reshape(-1)[[3, 17]] = [np.nan, np.inf]  # non-finite pixels: where they reach, they show
  out = (3, 6, 9)[-dims:]
  grid = rng.uniform(-1.3, 1.3, size=(2, *out, dims)).astype(dtype)
  special = [np.nan, np.inf, -np.inf, 1e30, -1e30, -1.0, 1.0, 0.0, 1 - 1e-7, -1 + 1e-7]
  flat = grid.reshape(-1)
  flat[: len(special)] = special
  flat[len(special) : 2 * len(special)] = special[::-1]
  R = rng.normal(size=(2, *out, channels)).astype(dtype)
  dU = rng.normal(size=U.shape).astype(dtype)
  dgrid = rng.normal(size=grid.shape).astype(dtype)
  return U, grid, R, dU, dgrid


def _run(out_path: str) -> None:
  """This process's build: every case's outputs, saved to ``out_path`` (npz)."""
  import jax

  jax.config.update("jax_enable_x64", True)
  import stn_jax

  status = stn_jax.native_status()
  assert status.available, status.reason
  results = {"reason": np.array(status.reason)}
  for n, (kernel, dims, dtype, channels) in enumerate(_cases()):
    U, grid, R, dU, dgrid = _inputs(dims, dtype, channels, seed=n)

    @jax.jit
    def passes(U, grid, R, dU, dgrid, kernel=kernel):
      outs = []
      for padding in PADDINGS:
        for align in (False, True):

          def f(u, g, padding=padding, align=align):
            return stn_jax.sample(u, g, kernel, padding_mode=padding, align_corners=align)

          V, vjp = jax.vjp(f, U, grid)
          _, dV = jax.jvp(f, (U, grid), (dU, dgrid))
          # Each gradient alone too: its own pass (grid_vjp, u_vjp), not the fused one.
          _, vjp_grid = jax.vjp(lambda g, f=f: f(U, g), grid)
          _, vjp_u = jax.vjp(lambda u, f=f: f(u, grid), U)
          outs += [V, *vjp(R), dV, *vjp_grid(R), *vjp_u(R)]
      return outs

    for k, array in enumerate(passes(U, grid, R, dU, dgrid)):
      results[f"{kernel}_{dims}d_{dtype}_c{channels}_{k}"] = np.asarray(array)
  # Pixel coordinates (the deformation fields' path) of -0.0 and whole pixels over
  # pixels of -0.0: where a floor's sign of zero would reach the outputs.
  from stn_jax._src import sampling

  rng = np.random.default_rng(0)
  for channels in (1, 3):
    U = rng.normal(size=(2, 4, 5, channels)).astype(np.float32)
    U[:, :, ::2] = -0.0
    coords = np.array([-0.0, 0.0, 1.0, 2.0, 4.0, -1.0], np.float32)
    grid = rng.choice(coords, size=(2, 6, 7, 2))
    R = rng.normal(size=(2, 6, 7, channels)).astype(np.float32)
    for padding in PADDINGS:

      def f(u, g, padding=padding):
        return sampling.sample_with_options(u, g, "bilinear", padding_mode=padding, pixels=True)

      V, vjp = jax.vjp(jax.jit(f), U, grid)
      for k, array in enumerate([V, *vjp(R)]):
        results[f"pixels_{padding}_c{channels}_{k}"] = np.asarray(array)
  np.savez(out_path, **results)


def _outputs(tmp_path: pathlib.Path, isa: str | None, taps: str | None = None) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "STN_JAX_NATIVE": "1"}
  env.pop("XLA_FLAGS", None)  # one CPU device
  env.pop("STN_JAX_NATIVE_ISA", None)
  env.pop("STN_JAX_NATIVE_TAPS", None)
  if isa:
    env["STN_JAX_NATIVE_ISA"] = isa
  if taps:
    env["STN_JAX_NATIVE_TAPS"] = taps
  path = tmp_path / f"{isa or 'default'}_{taps or 'default'}.npz"
  proc = subprocess.run(
    [sys.executable, __file__, str(path)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(path) as data:
    return {key: data[key] for key in data.files}


def _cpu_has(flag: str) -> bool:
  try:
    return f" {flag}" in pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return False


def _differences(a: dict, b: dict) -> list[str]:
  """The keys whose arrays differ in any bit, except that a NaN may be any NaN (which of
  two NaN operands an instruction passes on is the ISA's choice, not the kernel's)."""
  assert a.keys() == b.keys()
  differ = []
  for key, expected in a.items():
    got = b[key]
    assert got.dtype == expected.dtype and got.shape == expected.shape, key
    width = {4: np.uint32, 8: np.uint64}[expected.dtype.itemsize]
    same = (got.view(width) == expected.view(width)) | (np.isnan(got) & np.isnan(expected))
    if not same.all():
      differ.append(f"{key}: {int(np.sum(~same))} of {got.size} elements differ")
  return differ


def test_every_build_gives_the_same_bits(tmp_path):
  """Baseline == AVX2 (every pass), and AVX2 == AVX-512 (its one/three-channel passes, one
  channel's taps read as pairs and by gathers)."""
  from stn_jax._src import native

  if not native.available():
    pytest.skip("the compiled kernels are not built (or STN_JAX_NATIVE=0)")
  if not _cpu_has("avx2"):
    pytest.skip("no AVX2 here: every process runs the baseline build")
  outputs = {isa: _outputs(tmp_path, isa) for isa in ("baseline", "avx2", None)}
  reasons = {isa: str(out.pop("reason")) for isa, out in outputs.items()}
  assert "baseline build" in reasons["baseline"], reasons["baseline"]
  assert "AVX2 build" in reasons["avx2"] and "AVX-512" not in reasons["avx2"], reasons["avx2"]
  # The default process runs the widest build this CPU has.
  assert ("AVX-512" in reasons[None]) == _cpu_has("avx512f"), reasons[None]
  differ = _differences(outputs["avx2"], outputs["baseline"])
  assert not differ, "baseline and AVX2 builds disagree:\n" + "\n".join(differ)
  differ = _differences(outputs["avx2"], outputs[None])
  assert not differ, "the AVX2 build and this CPU's default disagree:\n" + "\n".join(differ)
  if _cpu_has("avx512f"):
    # The AVX-512 passes read one channel's taps as pairs on AMD, by gathers elsewhere:
    # the other way too, in a process of its own.
    other = "gathers" if "STN_JAX_NATIVE_TAPS=pairs" in reasons[None] else "pairs"
    taps = _outputs(tmp_path, None, other)
    assert f"STN_JAX_NATIVE_TAPS={other}" in str(taps.pop("reason"))
    differ = _differences(outputs["avx2"], taps)
    assert not differ, f"the AVX2 build and AVX-512 with {other} disagree:\n" + "\n".join(differ)
  # The comparison has teeth: the cases hold finite values, NaN and inf, all of them, and
  # zeros of both signs.
  values = np.concatenate([a.ravel() for a in outputs[None].values()])
  assert np.isfinite(values).sum() > 10_000 and np.isnan(values).any()
  zeros = values[values == 0]
  assert np.signbit(zeros).any() and not np.signbit(zeros).all()


if __name__ == "__main__":
  _run(sys.argv[1])
