"""Node tests: the pack inside a real ComfyUI 0.3.75 server and its real frontend."""
