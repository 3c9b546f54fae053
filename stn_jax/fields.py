"""Dense deformation fields for registration: warping, composition, integration, inversion.

Displacement fields are channels-last ``(..., *S, d)`` with ``d = len(S)`` (2 or 3),
components ``(x, y[, z])`` (the grid's order) in pixels, pull: output point ``p`` reads the
image at ``p + disp(p)``. :func:`to_monai` has a table of the conventions of MONAI and
VoxelMorph and the conversions between them.
"""

from stn_jax._src.fields import affine_to_displacement as affine_to_displacement
from stn_jax._src.fields import bending_energy as bending_energy
from stn_jax._src.fields import compose as compose
from stn_jax._src.fields import diffusion as diffusion
from stn_jax._src.fields import displacement_to_grid as displacement_to_grid
from stn_jax._src.fields import folding_fraction as folding_fraction
from stn_jax._src.fields import from_monai as from_monai
from stn_jax._src.fields import from_voxelmorph as from_voxelmorph
from stn_jax._src.fields import grid_to_displacement as grid_to_displacement
from stn_jax._src.fields import integrate as integrate
from stn_jax._src.fields import invert as invert
from stn_jax._src.fields import jacobian_determinant as jacobian_determinant
from stn_jax._src.fields import resize_displacement as resize_displacement
from stn_jax._src.fields import to_monai as to_monai
from stn_jax._src.fields import to_voxelmorph as to_voxelmorph
from stn_jax._src.fields import warp as warp

__all__ = (
  "affine_to_displacement",
  "bending_energy",
  "compose",
  "diffusion",
  "displacement_to_grid",
  "folding_fraction",
  "from_monai",
  "from_voxelmorph",
  "grid_to_displacement",
  "integrate",
  "invert",
  "jacobian_determinant",
  "resize_displacement",
  "to_monai",
  "to_voxelmorph",
  "warp",
)
