"""Connections to model servers: Triton over gRPC, and OpenAI-compatible HTTP upstreams."""
