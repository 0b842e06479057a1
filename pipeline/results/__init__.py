"""What a run leaves and what is made of it: the stored set (``SyntheticSet``), summary,
figures and report, experiment tracking, exports, the result grid and the paper protocol."""
