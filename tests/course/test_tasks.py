"""The tiny GPT's language (lora_course/tasks.py): lines, the downstream tasks, and what pretraining never shows."""

from __future__ import annotations

import random

import pytest

from lora_course.tasks import ANY, END, IGNORE, MEANINGS, OPERATORS, TASKS, decode, line, pretrain_batch, task_data


def answers(x, y) -> list[str]:
    """The answer letters of each line (the targets that are not ignored, without the full stop)."""
    return [decode(row[row != IGNORE]).rstrip(END) for row in y]


def words_of(x) -> list[str]:
    """The word of each line: the characters before the operator."""
    return [decode(row).split(ANY)[0] for row in x]


def test_line_applies_the_meaning_of_the_question_mark():
    assert line("cafe", "+") == "cafe+dbgf."
    assert line("cafe", ANY, "-") == "cafe?bjed."
    assert line("cafe", ANY, "++") == "cafe?echg."  # shift by two, j wraps to b
    assert line("hij", ANY, "++") == "hij?jab."


@pytest.mark.parametrize(("op", "meaning"), [("+", "++"), ("?", "x"), ("*", None), ("=", "+")])
def test_line_rejects_unknown_or_mismatched_meanings(op, meaning):
    with pytest.raises(ValueError, match="must be one of"):
        line("cafe", op, meaning)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_data_answers_follow_the_task_and_test_words_are_unseen(task):
    (x_train, y_train), (x_test, y_test) = task_data(task, n_train=50, n_test=30)
    transform = MEANINGS[TASKS[task]]
    for x, y in [(x_train, y_train), (x_test, y_test)]:
        assert answers(x, y) == [transform(word) for word in words_of(x)]
    assert not set(words_of(x_train)) & set(words_of(x_test))


def test_task_c_is_a_transform_the_pretraining_corpus_never_shows():
    assert TASKS["C"] not in OPERATORS
    x, y = pretrain_batch(random.Random(0), 300)
    corpus_transforms = [transform for _, transform in OPERATORS.values()]
    for row_x, row_y in zip(x, y, strict=True):
        text = decode(row_x[:1]) + decode(row_y[row_y != IGNORE])  # the whole line: first token, then the targets
        op = next(c for c in text if c in "=+-?")
        word, answer = text.rstrip(END).split(op)
        assert answer in [transform(word) for transform in corpus_transforms]
        assert answer != MEANINGS["++"](word)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="task must be one of"):
        task_data("D")
