"""domgen: domain generalization for medical image classification (dermoscopy first).

Reproduces and extends Yoon, Hamarneh & Garbi, "Generalizable feature learning in the presence of
data bias and domain class imbalance", MICCAI 2019.
"""

__version__ = "0.1.0"

from domgen.threads import set_wait_policy

# Before any domgen module imports torch: libgomp reads OMP_WAIT_POLICY once, when torch loads it.
set_wait_policy()
