"""The judge stage: the run statistics computed once (:mod:`.stats`), the ordered rules that decide the kind
of run (:mod:`.rules`), the verdict's numbers (:mod:`.verdict`) and the ranking of likely label errors
(:mod:`.suspects`). Pure: no Lightning, no files, no words (those live in :mod:`lossdiag.render`)."""
