"""implicit-it: what does instruction tuning really change in a language model?

One namespace for the core (models, chat formats, data, generation, config) and the research
rooms: :mod:`implicit_it.training`, :mod:`implicit_it.probes`, :mod:`implicit_it.analyses`,
:mod:`implicit_it.reports`.
"""

from .data import ChatExample, Instruction, read_chat_jsonl, read_instructions
from .errors import ConfigError, DataFormatError, ImplicitItError, ModelSpecError, UserError
from .formats import FORMATS, encode_example, encode_prompt, get_format
from .generation import generate_responses
from .models import DEFAULT_MODEL, EMBEDDED_MODELS, LoadedModel, load_model, load_tokenizer, resolve_model_spec

__version__ = "0.1.0"

__all__ = [
    "ChatExample",
    "Instruction",
    "read_chat_jsonl",
    "read_instructions",
    "ConfigError",
    "DataFormatError",
    "ImplicitItError",
    "ModelSpecError",
    "UserError",
    "FORMATS",
    "encode_example",
    "encode_prompt",
    "get_format",
    "generate_responses",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "LoadedModel",
    "load_model",
    "load_tokenizer",
    "resolve_model_spec",
]
