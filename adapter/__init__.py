"""OpenAI-compatible HTTP API in front of Triton's gRPC streaming (no torch, no engine)."""
