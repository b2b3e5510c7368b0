"""Layer 8, the warm model service: jobs submitted over HTTP into a persistent job table, run
one after another per device by a worker that keeps the model loaded, through the same runner as
the command line, and followed in a browser. Imports the layers below; the command line
(``serve``, ``--backend``) imports it.
"""
