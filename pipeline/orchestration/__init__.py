"""How a run is carried out: the driver's stages, the workers (each a slice of the classes) and
the protocol they answer, the in-process and Ray groups that run them, where they are placed,
and the run's state and checkpoints (``RunStore``)."""
