"""discovery: LLM-driven discovery of objective functions and optimizers."""

import os

# litellm fetches a price list from the internet at import unless told not to: offline-first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
