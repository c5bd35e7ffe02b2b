"""Lightning glue: callbacks (and the CSV logger) that connect a run to the run folder and TensorBoard.

``LossDiagnosis`` is the drop-in for any Lightning project (see its docstring for what it needs).
"""

from lossdiag.callbacks.loss_diagnosis import LossDiagnosis

__all__ = ["LossDiagnosis"]
