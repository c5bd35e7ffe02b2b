"""The diagnosis engine, by stage, with no Lightning in it: record -> judge -> write.

- :mod:`.samples`: what is recorded, per sample (``samples.npz``) — the table every stage reads;
- :mod:`.record`: per-epoch per-sample logits -> evaluated blocks of epochs, journals, resumable state
  (its table: :data:`.record.SCALARS`, the per-epoch scalars);
- :mod:`.judge`: the run statistics, the ordered rules (:data:`.judge.rules.RULES`) and the verdict's numbers;
- :mod:`.write`: every output file from the records and the verdict (its table: :data:`.write.OUTPUTS`).

Lightning adapters (:class:`lossdiag.callbacks.LossDiagnosis`) and the command line (``src.evaluate``) drive it.
"""
