"""Ready-made separable sampling kernels for :func:`stn_jax.sample`.

Each constructor returns a :class:`stn_jax.Kernel`; build your own with
``stn_jax.Kernel(fn, radius)``.
"""

from stn_jax._src.kernels import Kernel as Kernel
from stn_jax._src.kernels import gaussian as gaussian
from stn_jax._src.kernels import keys_cubic as keys_cubic
from stn_jax._src.kernels import lanczos as lanczos
from stn_jax._src.kernels import triangle as triangle

__all__ = ("Kernel", "gaussian", "keys_cubic", "lanczos", "triangle")
