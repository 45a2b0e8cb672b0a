"""lora_basics: LoRA (low-rank adaptation) from scratch, as a small readable library.

``import lora_basics as lora`` is a drop-in for ``import loralib as lora``:

>>> import lora_basics as lora
>>> layer = lora.Linear(768, 768, r=8, lora_alpha=16)
>>> lora.mark_only_lora_as_trainable(layer)

One concept per module:

    lora_linear.py    LoRALinear, the textbook layer built in notebook 02
    config.py         LoRAConfig, the settings object LoRALinear reads
    lora_layer.py     LoRALayer, what every loralib-style layer shares (settings, state-dict safety)
    merge.py          merge-on-eval: eval() folds the update into the weight, train() takes it out
    linear.py         Linear (loralib-compatible)
    merged_linear.py  MergedLinear, for fused projections such as Q|K|V
    embedding.py      Embedding
    conv.py           ConvLoRA, Conv1d, Conv2d, Conv3d
    utils.py          mark_only_lora_as_trainable, lora_state_dict (loralib's utils)
    inject.py         add_lora: LoRA into an existing model by module name; trainable_summary
    adapter_file.py   save_adapter, load_adapter: LoRA tensors only, checked on load
    export.py         merge_and_export: a plain torch model, updates merged
    peft_bridge.py    to_peft, from_peft: the same adapter as a Hugging Face PEFT adapter, both ways
    multi_adapter.py  MultiAdapterModel: many adapters on one frozen base, a different one per row of a batch
    lora_plus.py      LoRA+: B at a larger learning rate than A (optimizer parameter groups)
    pissa.py          PiSSA: B A starts at the top-r singular part of W0, the residual stays frozen
    dora.py           DoRA: a trainable magnitude per output feature, B A turns the direction (Linear)
    nf4.py            4-bit NormalFloat (QLoRA's base-weight format), bit for bit like bitsandbytes
    qlora.py          QLoRALinear: a frozen NF4 base weight, dequantized in the forward, LoRA on top
    validation.py     argument checks with clear errors

Defaults. The layers keep loralib's (``r=0``, ``lora_alpha=1``) so code written for loralib computes
the same thing: mind that ``lora.Linear(..., r=16)`` then scales the update by 1/16. ``add_lora``
defaults to ``r=8, lora_alpha=16``; the textbook ``LoRAConfig`` to ``lora_alpha = lora_r`` (scale 1).
The variants are off unless asked for: ``use_rslora=False``, ``use_dora=False``,
``init_lora_weights=True`` (not PiSSA), ``quantize_base=None`` (no 4-bit base).

The course around the library (the tiny GPT, exercise checkers, grader) is the package
``lora_course``; nothing here imports it.
"""

from .adapter_file import adapter_settings, load_adapter, save_adapter
from .config import LoRAConfig
from .conv import Conv1d, Conv2d, Conv3d, ConvLoRA
from .embedding import Embedding
from .export import merge_and_export
from .inject import add_lora, lora_layers, parameter_counts, trainable_summary
from .linear import Linear
from .lora_layer import LoRALayer
from .lora_linear import LoRALinear
from .lora_plus import lora_plus_param_groups
from .merged_linear import MergedLinear
from .multi_adapter import MultiAdapterModel, MultiLoRAEmbedding, MultiLoRALinear
from .peft_bridge import from_peft, to_peft
from .pissa import init_pissa
from .qlora import QLoRALinear
from .utils import lora_parameter_names, lora_state_dict, mark_only_lora_as_trainable

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.2.0"

__all__ = [
    "adapter_settings",
    "add_lora",
    "load_adapter",
    "lora_layers",
    "merge_and_export",
    "parameter_counts",
    "save_adapter",
    "to_peft",
    "init_pissa",
    "lora_plus_param_groups",
    "from_peft",
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
    "MultiAdapterModel",
    "MultiLoRAEmbedding",
    "MultiLoRALinear",
    "QLoRALinear",
    "lora_parameter_names",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
]
