"""gemma_edge.model: the Gemma 3 reference — config, model with KV caches, loaders, tokenizer, generation."""

from .config import GLOBAL, PRESETS, SLIDING, GemmaConfig, RopeConfig
from .errors import GemmaEdgeError
from .gemma import Gemma
from .generate import Runner, Sampling, generate
from .loader import LoadedModel, convert, load, read_checkpoint, read_config
from .runner import ReferenceRunner
from .tokenizer import Message, StreamDecoder, Tokenizer, format_chat, format_chat_continuation

__all__ = [
    "GLOBAL", "PRESETS", "SLIDING", "GemmaConfig", "RopeConfig", "GemmaEdgeError", "Gemma", "Runner",
    "Sampling", "generate", "LoadedModel", "convert", "load", "read_checkpoint", "read_config", "ReferenceRunner",
    "Message", "StreamDecoder", "Tokenizer", "format_chat", "format_chat_continuation",
]
