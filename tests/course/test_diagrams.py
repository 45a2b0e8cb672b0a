"""The course's diagrams (lora_course/diagrams.py) draw what their notebooks' alt text says they draw."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from lora_course import diagrams  # noqa: E402


def texts(fig) -> str:
    """Every string drawn on the figure: axes texts, titles and figure texts."""
    found = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return "\n".join(found)


@pytest.mark.parametrize(
    ("draw", "labels"),
    [
        (diagrams.lora_bypass, ["$W_0$", "$A$", "$B$", "\\frac{\\alpha}{r}", "dropout", "zero at start"]),
        (diagrams.merge_state_machine, ["merged=False", "merged=True", "eval():  weight +=", "train():  weight -="]),
        (diagrams.gpt_block, ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wte", "wpe", "lm_head"]),
        (diagrams.kernel_as_matrix, ["im2col view", "ConvLoRA view", "(2, 18)", "(6, 6)"]),
    ],
)
def test_each_diagram_shows_its_parts(draw, labels):
    fig = draw()
    try:
        drawn = texts(fig)
        for label in labels:
            assert label in drawn, f"{draw.__name__} does not show {label!r}"
    finally:
        plt.close(fig)


def labels_of_boxes(ax, color) -> set[str]:
    """The text in the middle of every box of ``ax`` filled with ``color``."""
    found = set()
    for box in ax.patches:
        if isinstance(box, FancyBboxPatch) and matplotlib.colors.same_color(box.get_facecolor(), color):
            middle = (box.get_x() + box.get_width() / 2, box.get_y() + box.get_height() / 2)
            found |= {
                t.get_text() for t in ax.texts if torch.allclose(torch.tensor(t.get_position()), torch.tensor(middle))
            }
    return found


def test_gpt_block_colours_exactly_the_layers_each_setup_replaces():
    fig = diagrams.gpt_block()
    try:
        replaced = [labels_of_boxes(ax, diagrams.TRAINED) for ax in fig.axes]
    finally:
        plt.close(fig)
    assert replaced[0] == {"Q", "V"}
    assert replaced[1] == {"Q", "K", "V", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert replaced[2] == {"wte", "wpe"}


def test_kernel_views_place_every_entry_where_torch_view_puts_it():
    c_out, c_in, k = 2, 2, 3
    fig = diagrams.kernel_as_matrix(c_out, c_in, k)
    try:
        kernel, im2col, convlora = (ax.images[0].get_array() for ax in fig.axes)
    finally:
        plt.close(fig)
    ids = torch.arange(c_out * c_in * k * k).view(c_out, c_in, k, k)
    expected_im2col = diagrams._kernel_colors(ids.view(c_out, -1), c_out, c_in, k)
    expected_convlora = diagrams._kernel_colors(ids.view(c_out * k, -1), c_out, c_in, k)
    assert torch.allclose(torch.as_tensor(im2col), expected_im2col)
    assert torch.allclose(torch.as_tensor(convlora), expected_convlora)
    assert tuple(kernel.shape[:2]) == (c_out * (k + 1) - 1, c_in * (k + 1) - 1)
