"""lora_basics: LoRA (low-rank adaptation) from scratch, as a small readable library.

``import lora_basics as lora`` is a drop-in for ``import loralib as lora``:

>>> import lora_basics as lora
>>> layer = lora.Linear(768, 768, r=8, lora_alpha=16)
>>> lora.mark_only_lora_as_trainable(layer)

Modules, one concept each:
    config.py       LoRAConfig, the settings object of the textbook layer
    lora_linear.py  LoRALinear, the textbook layer built in notebook 02
    base.py         LoRALayer: settings, checks, merge-on-eval, safe state dicts
    linear.py       Linear (loralib-compatible)
    merged.py       MergedLinear, for fused projections such as Q|K|V
    embedding.py    Embedding
    conv.py         ConvLoRA, Conv1d, Conv2d, Conv3d
    utils.py        mark_only_lora_as_trainable, lora_state_dict
    adapters.py     model-level tools: add_lora, save_adapter, load_adapter, merge_and_export
    gpt.py          a tiny GPT-2-style model (Conv1D weights stored (in, out)), for notebook 09
    tasks.py        the procedural corpus and downstream tasks of the tiny GPT
    pretrain.py     python -m lora_basics.pretrain: rebuilds data/tiny_gpt.pt
    checks.py       checkers for the classroom exercises
    exercises.py    python -m lora_basics.exercises generate | grade
    notebook.py     setup(): seeds and thread count, the first line of every notebook
    nbtools.py      execute notebooks in place and check their hygiene (make notebooks)
    bench.py        python -m lora_basics.bench (make bench)
"""

from .adapters import (
    adapter_settings,
    add_lora,
    load_adapter,
    lora_layers,
    merge_and_export,
    parameter_counts,
    save_adapter,
    trainable_summary,
)
from .base import LoRALayer
from .config import LoRAConfig
from .conv import Conv1d, Conv2d, Conv3d, ConvLoRA
from .embedding import Embedding
from .linear import Linear
from .lora_linear import LoRALinear
from .merged import MergedLinear
from .utils import lora_parameter_names, lora_state_dict, mark_only_lora_as_trainable

__version__ = "0.1.0"

__all__ = [
    "adapter_settings",
    "add_lora",
    "load_adapter",
    "lora_layers",
    "merge_and_export",
    "parameter_counts",
    "save_adapter",
    "trainable_summary",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvLoRA",
    "Embedding",
    "LoRAConfig",
    "LoRALayer",
    "LoRALinear",
    "Linear",
    "MergedLinear",
    "lora_parameter_names",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
]
