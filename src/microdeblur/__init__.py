"""microdeblur: deblur bright-field microscopy images by swapping a disentangled blur code."""

import os

# Idle OpenMP workers sleep instead of spinning: on a CPU shared with other busy processes, spinning
# threads waiting for a preempted sibling made 2 threads 5x slower than 1 (docs/inference.md).
# Effective only when microdeblur is imported before torch, as it is for the command line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0.dev0"
