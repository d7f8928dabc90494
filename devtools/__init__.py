"""Developer and test tooling of the ThinkDiff pack (not shipped to users' ComfyUI).

Run its commands from the repository root with ``python -m devtools.<module>``:
``run_workflow`` (a shipped workflow headless on a real ComfyUI), ``demo_models`` (random-weight
stand-ins in the real file formats), ``make_workflows`` (regenerate workflows/ with the real
frontend), ``make_example_inputs``. ``comfy_server`` starts a ComfyUI process; ``comfy_client``
talks to a running one over HTTP; ``ui_to_api`` converts UI workflows to API prompts.
"""
