"""Node tests: the pack inside real ComfyUI servers (0.3.75 and 0.33.0) and their real frontends."""
