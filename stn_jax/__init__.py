"""stn_jax: Spatial Transformer Networks for JAX and Flax.

The functional core: :func:`make_grid` turns transformation parameters into a normalised
sampling grid and :func:`sample` reads a channels-last feature map on it with a kernel,
both with exactly PyTorch's ``affine_grid`` / ``grid_sample`` conventions.
"""

from stn_jax import fields as fields
from stn_jax import kernels as kernels
from stn_jax._src.grids import TRANSFORMS as TRANSFORMS
from stn_jax._src.grids import attention_to_affine as attention_to_affine
from stn_jax._src.grids import compose as compose
from stn_jax._src.grids import default_control_points as default_control_points
from stn_jax._src.grids import identity_theta as identity_theta
from stn_jax._src.grids import invert as invert
from stn_jax._src.grids import make_grid as make_grid
from stn_jax._src.grids import normalized_to_pixel as normalized_to_pixel
from stn_jax._src.grids import pixel_to_normalized as pixel_to_normalized
from stn_jax._src.kernels import Kernel as Kernel
from stn_jax._src.native import NativeStatus as NativeStatus
from stn_jax._src.native import native_available as native_available
from stn_jax._src.native import native_status as native_status
from stn_jax._src.sampling import PADDING_MODES as PADDING_MODES
from stn_jax._src.sampling import sample as sample
from stn_jax._src.sampling import warp as warp

__version__ = "0.1.0"

__all__ = (
  "PADDING_MODES",
  "TRANSFORMS",
  "Kernel",
  "NativeStatus",
  "attention_to_affine",
  "compose",
  "default_control_points",
  "fields",
  "identity_theta",
  "invert",
  "kernels",
  "make_grid",
  "native_available",
  "native_status",
  "normalized_to_pixel",
  "pixel_to_normalized",
  "sample",
  "warp",
)
