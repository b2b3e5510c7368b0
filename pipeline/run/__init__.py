"""Layer 7, one run from a configuration: the configuration (the pipeline's options and the
reconstructors' flags), planning and resume, one sequence or many, the Ray engine. Imports the
layers below."""
