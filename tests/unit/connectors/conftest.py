"""LiteLLM fetches its model price map from the network at import unless told to use the copy it ships."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
