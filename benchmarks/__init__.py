"""Tritium's benchmarks: `tritium bench` (a load generator for OpenAI-compatible and
Triton endpoints), the null model (the stack's ceiling), and the suite that measures
the stack side by side with a peer. See docs/benchmarks.md.

Nothing here imports torch at module level; the engine and Hugging Face parts of the
suite import it only when they run.
"""
