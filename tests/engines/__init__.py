"""The serving engines the remote backend is tested and benchmarked against: llama.cpp's
llama-server and vLLM's CPU build, installed into ~/.cache and started on loopback."""
