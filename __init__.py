"""ThinkDiff for ComfyUI: VLM reasoning -> FLUX conditioning.

ComfyUI imports this file at start-up. It must stay cheap and must never take ComfyUI down: the node
classes need ComfyUI's V3 node API (``comfy_api.latest``, ComfyUI >= 0.3.75); if that import fails
we log why and register nothing. Heavy imports (transformers, model weights) happen only when a
node runs. The plain-PyTorch library lives in ``thinkdiff_core`` and imports without ComfyUI.
"""
import logging

_log = logging.getLogger("thinkdiff")

try:
    from comfy_api.latest import ComfyExtension as _ComfyExtension, io as _io  # noqa: F401
except Exception as _e:  # ImportError on old ComfyUI, or anything a broken install raises
    import importlib.util as _util
    # outside ComfyUI (e.g. pytest importing the repository as a package) there is nothing to register
    _outside = isinstance(_e, ImportError) and _util.find_spec("comfy") is None
    (_log.debug if _outside else _log.error)("ThinkDiff: ComfyUI's V3 node API (comfy_api.latest) could not be imported (%s: %s). "
               "The ThinkDiff nodes need ComfyUI 0.3.75 or newer; update ComfyUI. No ThinkDiff nodes "
               "were registered.", type(_e).__name__, _e)
else:
    from .nodes import comfy_entrypoint  # noqa: F401

    # frontend extension (dynamic image slots on VLM Encode Multimodal), served under
    # /extensions/<pack folder>/
    WEB_DIRECTORY = "./web/js"

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
