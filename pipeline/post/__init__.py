"""Layer 4, what is done with finished windows: merging them into one scene, scoring them
against ground truth. Imports the layers below."""
