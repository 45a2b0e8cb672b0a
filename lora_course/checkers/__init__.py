"""Checkers for the classroom exercises in ``notebooks/exercises/``: immediate, specific feedback, and the grader's verdict.

One module per lesson (``lesson02.py`` holds the checkers of ``02_lora_linear_from_scratch``), the shared
machinery in ``common.py``. Each exercise cell defines a function (or class); the check cell right after it
calls one checker::

    from lora_course import checkers
    checkers.check_lora_forward(lora_forward)

Each check has two halves (``common.py`` says why): a *probe* runs the learner's code on inputs built from a
seed and records what came back, a *judge* compares that with ``lora_basics`` (the reference). In a notebook
both run at once: on success the check prints one line starting with ``✓``; on failure it prints what was
expected, what came back and a hint, and raises :class:`ExerciseFailed` (an ``AssertionError``) carrying the
same message, with a ``status``:

- ``"not attempted"``: the learner's code still raises the stub's ``NotImplementedError``,
- ``"error"``: the learner's code raised some other exception,
- ``"failed"``: it ran but gave a wrong answer, of the wrong type, or took a shortcut the task forbids.

The grader (``python -m lora_course.grader``) runs the probe in the learner's sandboxed process and the judge
in its own (``EXERCISES[name]``), so nothing printed or patched in a notebook decides a grade.
"""

from .common import EXERCISES, ExerciseFailed
from .lesson01 import check_best_rank_r, check_param_counts, check_rank_for_energy
from .lesson02 import check_freeze_base, check_lora_forward, check_lora_linear_class
from .lesson03 import check_budget, check_lora_grads, check_scaling
from .lesson04 import check_fifo_delta, check_lora_state_dict, check_wrap_linears
from .lesson05 import check_merged_forward, check_merged_scatter, check_merged_shapes
from .lesson06 import check_changed_tokens, check_embedding_forward, check_embedding_merge
from .lesson07 import check_conv_delta, check_conv_forward, check_conv_shapes
from .lesson08 import NaiveMergeLinear, check_export_linear, check_no_double_merge
from .lesson09 import check_export_plain, check_inject_qv, check_lora_counts
from .lesson09 import prepare as _prepare_lesson09
from .lesson10 import check_dora_weight, check_lora_plus_groups, check_pissa_split
from .lesson11 import check_dequantize_packed, check_nf4_levels, check_quantize_blockwise
from .lesson12 import check_lora_config, check_merged_as_lora, check_peft_key
from .lesson13 import check_mixed_embedding, check_mixed_linear, check_stack_adapters
from .lesson14 import check_allreduce_bytes, check_memory_per_gpu, check_shard_loss


def prepare() -> None:
    """Read every file a judge needs now: the grader calls this before it runs any learner's code."""
    _prepare_lesson09()


__all__ = [
    "EXERCISES",
    "ExerciseFailed",
    "prepare",
    "check_param_counts",
    "check_best_rank_r",
    "check_rank_for_energy",
    "check_lora_forward",
    "check_freeze_base",
    "check_lora_linear_class",
    "check_scaling",
    "check_lora_grads",
    "check_budget",
    "check_fifo_delta",
    "check_lora_state_dict",
    "check_wrap_linears",
    "check_merged_shapes",
    "check_merged_scatter",
    "check_merged_forward",
    "check_embedding_merge",
    "check_embedding_forward",
    "check_changed_tokens",
    "check_conv_shapes",
    "check_conv_delta",
    "check_conv_forward",
    "NaiveMergeLinear",
    "check_no_double_merge",
    "check_export_linear",
    "check_lora_counts",
    "check_inject_qv",
    "check_export_plain",
    "check_dora_weight",
    "check_pissa_split",
    "check_lora_plus_groups",
    "check_nf4_levels",
    "check_quantize_blockwise",
    "check_dequantize_packed",
    "check_peft_key",
    "check_lora_config",
    "check_merged_as_lora",
    "check_shard_loss",
    "check_allreduce_bytes",
    "check_memory_per_gpu",
    "check_stack_adapters",
    "check_mixed_linear",
    "check_mixed_embedding",
]
