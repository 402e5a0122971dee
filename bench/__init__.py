"""Benchmarks (not tests): ``python -m bench`` runs the suite and writes a JSON report; ``bench/ot_head.py`` is the
OT head against the reference-style loop; ``bench/gpu.sh`` runs the suite on CUDA."""
