"""Environment for running offline: set before sentence-transformers / litellm are imported.

Nothing in Kith may download weights or price maps at run time. Imported first by ``providers``.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_LOCAL_BLOG_POSTS", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# OpenVINO's converter reports usage to Google Analytics through openvino-telemetry (a dependency of
# openvino; it counts as consent when no consent file exists) and writes ~/intel/. A local-first bot
# sends nothing: with the module unimportable, openvino falls back to its built-in no-op stub.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
