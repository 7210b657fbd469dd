"""specbench: a workbench for comparing LLM decoding strategies on one shared core."""
from .drafters import load_draft, load_drafter, random_drafter
from .errors import SpecbenchError
from .generate import GenerationOutput, encode_prompt, generate
from .loading import ModelSource, from_hf, load_model, locate_model, random_model, save_model
from .model import KVCache, ModelArgs, Transformer
from .options import methods_table
from .sampling import SamplingParams

__all__ = ["SpecbenchError", "GenerationOutput", "encode_prompt", "generate", "from_hf", "load_model",
           "locate_model", "ModelSource", "random_model", "KVCache", "ModelArgs", "Transformer", "SamplingParams",
           "load_draft", "load_drafter", "random_drafter", "save_model", "methods_table"]
