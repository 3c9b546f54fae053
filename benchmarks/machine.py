"""The CPU a benchmark ran on, for its results' header (shared by the bench scripts)."""

import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo with its family and model numbers (guests often
  see a bare "AMD EPYC": family 25 model 17 is Zen 4, with AVX-512; model 1 is Zen 3,
  without), else what ``platform`` knows."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if not key.strip() and fields:
          break  # the first processor's block is enough
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  name = fields.get("model name")
  if not name:
    return platform.processor() or platform.machine() or "unknown"
  if "cpu family" in fields and "model" in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name
