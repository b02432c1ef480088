"""Tritium: OpenAI-compatible LLM serving on NVIDIA Triton Inference Server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tritium")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
