"""The embedded demo Triton Inference Server (PyTriton), run as a child process."""
