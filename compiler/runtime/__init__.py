"""The runtime: the dispatcher (the only stateful piece), the sampling loop, conditioning and prompts."""
