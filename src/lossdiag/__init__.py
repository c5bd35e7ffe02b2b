"""lossdiag: why validation loss rises while validation accuracy holds.

Train a classifier with PyTorch Lightning and Hydra, record every validation sample's loss every epoch, and
get a written diagnosis of which samples carry the rise and why. Import nothing heavy here: ``--help`` of the
entry points must stay instant.
"""

from pathlib import Path

__version__ = "0.2.0"

# the Hydra configs: ``conf/`` at the repository root, reached through the package's ``conf`` link (an
# installed wheel holds a copy), so ``python -m lossdiag.train`` works from any folder
CONF_DIR = Path(__file__).resolve().parent / "conf"
