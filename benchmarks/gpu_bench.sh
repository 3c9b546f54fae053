#!/usr/bin/env bash
# Runs benchmarks/bench_sampler.py on a CUDA machine: stn_jax.sample (jax[cuda12]) against
# PyTorch's CUDA grid_sample, jax map_coordinates and dm-pix, and writes sampler_gpu.md and
# sampler_gpu.json into the folder given as the first argument.
#
#   bash benchmarks/gpu_bench.sh OUT_DIR [extra bench_sampler.py args]
#
# Assumptions (not checked beyond what fails loudly):
# - Linux x86_64 with an NVIDIA GPU and a driver new enough for the CUDA wheels; nvidia-smi works.
# - Either an interpreter that already has JAX on the GPU and PyTorch on CUDA (STN_BENCH_PYTHON,
#   else a plain python3 that has both, as on an air-gapped GPU image), or python3 >= 3.11 with
#   venv and the pip registries reachable, for a venv with jax[cuda12] and torch.
# - Run from anywhere; the repository root is found from this file's location.
# Budget: under 5 minutes in all. The install is the slow part (~1-2 min on a warm mirror);
# the benchmark itself uses --repeats 20 and a 240 s timeout, and a GPU run takes well under
# a minute (the slow CPU-era baselines, dm-pix and map_coordinates, are fast on GPU).
set -euo pipefail

OUT_DIR="${1:?usage: gpu_bench.sh OUT_DIR [extra args]}"
shift || true
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STN_BENCH_VENV:-${TMPDIR:-/tmp}/stn-jax-gpu-bench-venv}"
mkdir -p "${OUT_DIR}"
OUT_DIR="$(cd "${OUT_DIR}" && pwd)"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "${OUT_DIR}/nvidia-smi.txt"

has_gpu_stack() {  # does interpreter $1 import jax (on a GPU), torch (with CUDA), flax, optax?
  "$1" -c 'import jax, torch, flax, optax
assert jax.default_backend() == "gpu" and torch.cuda.is_available()' >/dev/null 2>&1
}

if [[ -n "${STN_BENCH_PYTHON:-}" ]]; then
  PY="${STN_BENCH_PYTHON}"
elif has_gpu_stack python3; then
  PY="$(command -v python3)"
  echo "python3 already has JAX on the GPU and PyTorch on CUDA: no install"
else
  if [[ ! -x "${VENV}/bin/python" ]]; then
    python3 -m venv "${VENV}"
  fi
  PY="${VENV}/bin/python"
  "${PY}" -m pip install --quiet --upgrade pip
  # jax with its CUDA 12 wheels (bundled CUDA/cuDNN, only the driver is needed); torch's
  # default Linux wheel from PyPI ships CUDA; dm-pix is optional (the harness skips it).
  "${PY}" -m pip install --quiet "jax[cuda12]" torch numpy
  "${PY}" -m pip install --quiet dm-pix || echo "dm-pix did not install; it will be skipped"
  # stn_jax's own runtime dependencies; stn_jax itself is imported from the checkout.
  "${PY}" -m pip install --quiet flax optax
fi

"${PY}" - <<'EOF'
import jax, torch
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.version.cuda)
assert jax.default_backend() == "gpu", "jax did not find the GPU"
assert torch.cuda.is_available(), "torch did not find the GPU"
EOF

cd "${ROOT}"
# Do not let JAX grab 75% of the GPU up front: torch shares the card in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
timeout 240 "${PY}" benchmarks/bench_sampler.py --device gpu --repeats 20 --out "${OUT_DIR}" "$@" \
  2>&1 | tee "${OUT_DIR}/bench_sampler.log"
echo "results in ${OUT_DIR}"
