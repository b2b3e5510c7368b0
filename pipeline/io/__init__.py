"""Layer 2, what is read and written: frames and video, window folders and their records, runs
over many sequences, plots, the training ``Dataset``, synthetic test scenes. Imports ``core`` and
``infra``."""
