"""Layer 1, machinery with no knowledge of reconstruction: option declarations, atomic files,
locks, memory accounting, processes, temporary folders, hub switches. Imports only ``core``."""
