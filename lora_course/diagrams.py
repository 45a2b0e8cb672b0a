"""Diagrams of the course, drawn with matplotlib: a picture where a learner would rather look than read.

    lora_bypass()           notebook 02: x -> W0 and x -> A -> B, scaled and summed
    kernel_as_matrix()      notebook 07: a conv kernel viewed as a matrix, the im2col way and loralib's way
    merge_state_machine()   notebook 08: train()/eval() merge and unmerge the update
    gpt_block()             notebook 09: which layers of a GPT block each LoRA set-up replaces

Each function returns a ``matplotlib.figure.Figure`` (the notebook shows it with ``plt.show()``); the
notebook's markdown carries the alt text. Nothing here is computed from a model: the drawings are
fixed, except the kernel views, which come from ``torch``'s own ``view``. Needs matplotlib (the
``notebooks`` extra, as the lessons do).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon

FROZEN = "#d9d9d9"  # grey: pretrained weights, not trained
TRAINED = "#f4a259"  # orange: LoRA factors, trained
PLAIN = "white"  # no weights (attention, GELU, a sum)


def _box(ax, x, y, w, h, text, color=FROZEN, fontsize=10):
    """A rounded box with its lower-left corner at (x, y) and ``text`` in the middle."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="black"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text="", offset=(0.0, 0.12), connectionstyle="arc3", fontsize=9):
    ax.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="black", connectionstyle=connectionstyle)
    )
    if text:
        middle = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
        ax.text(*middle, text, ha="center", va="bottom", fontsize=fontsize)


def _canvas(width, height, figsize):
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def lora_bypass() -> Figure:
    """The LoRA layer: the frozen path ``W0 x`` and the low-rank bypass ``(alpha / r) B A x``, summed."""
    fig, ax = _canvas(11, 5, figsize=(9, 4.1))
    ax.text(0.5, 2.5, "$x$\n$(d_{in})$", ha="center", va="center", fontsize=12)
    # frozen path, above
    _box(ax, 3.2, 3.3, 3.2, 1.2, "$W_0$  $(d_{out} \\times d_{in})$\nfrozen: no gradient", FROZEN)
    _arrow(ax, (1.0, 2.7), (3.15, 3.9))
    # low-rank bypass, below: A narrows d_in to r, B widens r to d_out
    ax.add_patch(Polygon([(2.6, 0.3), (2.6, 2.1), (3.9, 1.5), (3.9, 0.9)], closed=True, fc=TRAINED, ec="black"))
    ax.text(3.1, 1.2, "$A$", ha="center", va="center", fontsize=12)
    ax.text(3.25, -0.05, "$(r \\times d_{in})$\nrandom at start", ha="center", va="top", fontsize=8)
    ax.add_patch(Polygon([(4.5, 0.9), (4.5, 1.5), (5.8, 2.1), (5.8, 0.3)], closed=True, fc=TRAINED, ec="black"))
    ax.text(5.3, 1.2, "$B$", ha="center", va="center", fontsize=12)
    ax.text(5.15, -0.05, "$(d_{out} \\times r)$\nzero at start", ha="center", va="top", fontsize=8)
    _arrow(ax, (3.9, 1.2), (4.5, 1.2))
    ax.text(4.2, 1.65, "$r$", ha="center", fontsize=11)
    _arrow(ax, (1.0, 2.3), (2.55, 1.3), "dropout", offset=(-0.45, -0.45), fontsize=8)
    ax.text(6.6, 1.2, "$\\times\\,\\frac{\\alpha}{r}$", ha="center", va="center", fontsize=13)
    # sum and output
    ax.add_patch(Circle((8.0, 2.5), 0.35, fc=PLAIN, ec="black"))
    ax.text(8.0, 2.5, "+", ha="center", va="center", fontsize=14)
    _arrow(ax, (6.45, 3.9), (7.75, 2.75))
    _arrow(ax, (7.0, 1.2), (7.75, 2.25))
    _arrow(ax, (8.35, 2.5), (9.2, 2.5))
    ax.text(9.3, 2.5, "$h$ $(d_{out})$", ha="left", va="center", fontsize=12)
    ax.text(
        5.5,
        4.85,
        "$h = W_0 x + \\frac{\\alpha}{r} B A x$: at the start $BA = 0$, so $h = W_0 x$",
        ha="center",
        fontsize=11,
    )
    ax.text(10.95, 0.1, "grey: frozen   orange: trained", ha="right", va="bottom", fontsize=8)
    return fig


def merge_state_machine() -> Figure:
    """The ``merged`` flag of a LoRA layer and what ``train()`` / ``eval()`` do to ``weight`` in each state."""
    fig, ax = _canvas(12, 6, figsize=(9.5, 4.75))
    unmerged = "unmerged  (merged=False)\nweight holds $W_0$\nforward: $W_0 x + \\Delta W x$\n(two paths)"
    merged = "merged  (merged=True)\nweight holds $W_0 + \\Delta W$\nforward: one matmul,\nas fast as the plain layer"
    _box(ax, 0.2, 1.7, 4.0, 2.0, unmerged, "#e8f0fa")
    _box(ax, 7.8, 1.7, 4.0, 2.0, merged, "#fbe9d8")
    _arrow(ax, (4.35, 3.2), (7.65, 3.2), "eval():  weight += $\\Delta W$")
    _arrow(ax, (7.65, 2.2), (4.35, 2.2), "train():  weight -= $\\Delta W$", offset=(0.0, -0.55))
    _arrow(ax, (2.6, 3.8), (3.8, 3.8), "train(): nothing", connectionstyle="arc3,rad=-1.2", offset=(0, 0.8))
    _arrow(ax, (8.8, 3.8), (10.0, 3.8), "eval(): nothing", connectionstyle="arc3,rad=-1.2", offset=(0, 0.8))
    _arrow(ax, (0.9, 5.2), (1.2, 3.8))
    ax.text(0.2, 5.3, "a new layer starts here", fontsize=8, va="bottom")
    ax.text(
        6.0,
        0.7,
        "$\\Delta W = \\frac{\\alpha}{r} BA$ in the weight's layout.   merge_weights=False: eval() never merges.\n"
        "lora_basics saves $W_0$ in state_dict() in both states, and unmerges around load_state_dict().",
        ha="center",
        va="center",
        fontsize=8,
    )
    return fig


def _kernel_colors(ids: torch.Tensor, c_out: int, c_in: int, k: int) -> torch.Tensor:
    """RGB image of a view of the kernel: hue = input channel, darker = output channel 0."""
    hues = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16]])
    out_channel = ids // (c_in * k * k)
    in_channel = ids // (k * k) % c_in
    color = hues[in_channel % len(hues)]  # (..., 3)
    lighten = (out_channel.float() / max(1, c_out - 1) * 0.55).unsqueeze(-1)  # 0 for the first output channel
    return color + (1 - color) * lighten


def kernel_as_matrix(c_out: int = 2, c_in: int = 2, k: int = 3) -> Figure:
    """One conv kernel ``(c_out, c_in, k, k)`` and two matrix views of it: ``(c_out, c_in k k)`` (im2col: a row
    per output channel) and loralib's ConvLoRA view ``(c_out k, c_in k)`` (the same numbers in memory order)."""
    ids = torch.arange(c_out * c_in * k * k).view(c_out, c_in, k, k)  # each entry's position in memory
    views = {
        f"kernel $(c_{{out}}, c_{{in}}, k, k) = ({c_out}, {c_in}, {k}, {k})$": None,
        f"im2col view  $(c_{{out}},\\ c_{{in}} k^2) = ({c_out}, {c_in * k * k})$\nrow = output channel": ids.view(
            c_out, -1
        ),
        f"ConvLoRA view  $(c_{{out}} k,\\ c_{{in}} k) = ({c_out * k}, {c_in * k})$\nthe same entries in memory order": (
            ids.view(c_out * k, -1)
        ),
    }
    fig, axes = plt.subplots(
        1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [c_in * (k + 1), 2 * c_in * k, c_in * k]}
    )
    for ax, (title, view) in zip(axes, views.items(), strict=True):
        if view is None:  # the kernel itself: one k x k grid per (output, input) channel pair
            grid = torch.full((c_out * (k + 1) - 1, c_in * (k + 1) - 1), -1)
            for o in range(c_out):
                for i in range(c_in):
                    grid[o * (k + 1) : o * (k + 1) + k, i * (k + 1) : i * (k + 1) + k] = ids[o, i]
            view = grid
        image = _kernel_colors(view.clamp(min=0), c_out, c_in, k)
        image[view < 0] = 1.0  # white gaps between the k x k grids
        ax.imshow(image.numpy(), aspect="equal")
        for row in range(view.shape[0]):
            for col in range(view.shape[1]):
                if view[row, col] >= 0:  # the entry's position in its k x k grid
                    ax.text(col, row, int(view[row, col]) % (k * k), ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel("output channel 0 (dark), 1 (light)", fontsize=8)
    axes[0].set_xlabel("input channel 0 (blue), 1 (orange)\nnumbers: position in the k x k grid", fontsize=8)
    fig.tight_layout()
    return fig


def gpt_block() -> Figure:
    """One GPT-2 block and the embeddings, three times: which layers each LoRA set-up of notebook 09 replaces."""
    setups = {
        "LoRA on Q/V\nMergedLinear, enable_lora=[T, F, T]": {"Q", "V"},
        "LoRA on all linear layers of the blocks\nLinear(fan_in_fan_out=True)": {
            "Q",
            "K",
            "V",
            "attn.c_proj",
            "mlp.c_fc",
            "mlp.c_proj",
        },
        "LoRA on the embeddings\nEmbedding": {"wte", "wpe"},
    }
    # (name, colour when not replaced), bottom to top; "c_attn" is drawn as its three slices Q | K | V
    stack = [
        ("wte + wpe", FROZEN),
        ("ln_1", FROZEN),
        ("c_attn", FROZEN),
        ("attention", PLAIN),
        ("attn.c_proj", FROZEN),
        ("+ residual", PLAIN),
        ("ln_2", FROZEN),
        ("mlp.c_fc", FROZEN),
        ("GELU", PLAIN),
        ("mlp.c_proj", FROZEN),
        ("+ residual", PLAIN),
        ("ln_f, lm_head", FROZEN),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 6.2))
    for ax, (title, replaced) in zip(axes, setups.items(), strict=True):
        ax.set_xlim(0, 6)
        ax.set_ylim(-0.3, len(stack) + 0.6)
        ax.axis("off")
        ax.set_title(title, fontsize=9)
        for level, (name, color) in enumerate(stack):
            y = level + 0.1
            if name == "c_attn":
                for j, part in enumerate("QKV"):
                    _box(ax, 1.0 + j * 1.35, y, 1.2, 0.7, part, TRAINED if part in replaced else color)
                ax.text(5.2, y + 0.35, "c_attn", va="center", fontsize=8)
                continue
            if name == "wte + wpe":
                for j, part in enumerate(["wte", "wpe"]):
                    _box(ax, 1.0 + j * 2.05, y, 1.9, 0.7, part, TRAINED if part in replaced else color, fontsize=9)
                continue
            _box(ax, 1.0, y, 3.95, 0.7, name, TRAINED if name in replaced else color, fontsize=9)
            if level > 0:
                _arrow(ax, (2.95, y - 0.2), (2.95, y))
        ax.plot([0.6, 0.6], [1.05, 10.85], color="black", lw=1)
        ax.text(0.45, 6.0, "block, x n_layer", rotation=90, va="center", ha="right", fontsize=8)
    fig.text(
        0.5,
        0.01,
        "orange: replaced by a LoRA layer (frozen weight + trained A, B)   grey: frozen   white: no weights",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
