"""Multi-head latent attention (DeepSeek-V2 §2.1): its config, the attention module and its
latent KV cache. Enable it with ``ModelConfig(attention="mla", mla=MLAConfig(...))``."""

from lmforge.model.mla.attention import MultiHeadLatentAttention
from lmforge.model.mla.cache import LatentKVCache
from lmforge.model.mla.config import MLAConfig

__all__ = ["LatentKVCache", "MLAConfig", "MultiHeadLatentAttention"]
