"""The evaluation protocol: networks trained from scratch on a set and tested on real data
(``training``), their recorded runs (``records``), and the same mini-batches for your own loop
(``batches``)."""
