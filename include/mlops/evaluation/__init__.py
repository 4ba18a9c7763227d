"""Stage 3, evaluation: measure a candidate and decide whether it may serve.

``evaluate`` scores the candidate (and the champion) on the test rows, with size and latency; ``gate``
applies TFX Evaluator semantics to those metrics; ``reports`` renders the Jinja2 reports.  Hands the
registry stage a gate decision (deploy, optimize or reject) and the metrics it was made on.
"""
