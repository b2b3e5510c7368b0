"""Layer 5, how batches run: the frame loader, worker pools, the pipelined loop, Accelerate
process groups. Imports the layers below."""
