"""A tiny procedural language of string transforms: the pretraining corpus and two downstream tasks.

Every line is ``<word><op><answer>.``: a word of 3-6 letters from ``a``-``j``, one operator character,
the transformed word and a full stop::

    cafe=cafe.    copy
    cafe+dbgf.    shift: every letter to the next one (j -> a)
    cafe-bjed.    shift back: every letter to the one before (a -> j)
    cafe?dbgf.    "?": one of the three, chosen at random for each line of the corpus

The pretraining corpus mixes the four operators equally. After ``?`` a pretrained model can only
guess which transform is meant (it could tell from the first answer letter on, but the tiny model
does not learn to). Each downstream task gives ``?`` one fixed meaning, which fine-tuning has to learn:

    task A: ``?`` means shift  (cafe?dbgf.)        task B: ``?`` means shift back  (cafe?bjed.)
    task C: ``?`` means shift by two  (cafe?echg.): a transform the corpus never shows, a new skill

Everything is generated from a seed with ``random.Random``, the same on every machine. Characters
are tokens: ``VOCAB`` has 15 of them.

(Reversal was tried as a fourth operator: this 2-layer model learns it far more slowly than the
letter-wise transforms, so it was left out to keep pretraining to a few minutes.)
"""

from __future__ import annotations

import random

import torch

LETTERS = "abcdefghij"
MIN_LEN, MAX_LEN = 3, 6
#: Operator character -> (name, function of the word).
OPERATORS = {
    "=": ("copy", lambda w: w),
    "+": ("shift", lambda w: _shift(w, 1)),
    "-": ("shift back", lambda w: _shift(w, -1)),
}
ANY = "?"  # the ambiguous operator
PRETRAIN_OPS = "=+-?"
#: What ``?`` can mean in a downstream task: the transform of an operator, or ``"++"``, shift by two,
#: which no line of the pretraining corpus shows.
MEANINGS = {op: transform for op, (_, transform) in OPERATORS.items()} | {"++": lambda w: _shift(w, 2)}
#: Downstream task -> the meaning of ``?`` (a key of ``MEANINGS``).
TASKS = {"A": "+", "B": "-", "C": "++"}
END = "."
VOCAB = END + LETTERS + "=+-?"
#: The longest line: word, operator, answer, full stop.
LINE_LEN = 2 * MAX_LEN + 2
IGNORE = -100  # target value that cross_entropy skips


def _shift(word: str, by: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + by) % len(LETTERS)] for c in word)


def encode(text: str) -> list[int]:
    """Characters -> token ids (a ``ValueError`` names any character outside ``VOCAB``)."""
    bad = sorted(set(text) - set(VOCAB))
    if bad:
        raise ValueError(f"characters {bad} are not in the vocabulary {VOCAB!r}")
    return [VOCAB.index(c) for c in text]


def decode(ids) -> str:
    """Token ids (list or 1-D tensor) -> characters."""
    return "".join(VOCAB[int(i)] for i in ids)


def random_word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))


def line(word: str, op: str, meaning: str | None = None) -> str:
    """``word`` transformed by operator ``op``, as one line: ``line("cafe", "+") == "cafe+dbgf."``.

    For ``op="?"``, ``meaning`` is the key of ``MEANINGS`` whose transform the answer uses:
    ``line("cafe", "?", "++") == "cafe?echg."``.
    """
    meaning = meaning or op
    if op not in OPERATORS and op != ANY:
        raise ValueError(f"op must be one of {list(OPERATORS) + [ANY]}, got {op!r}")
    if meaning not in MEANINGS or (op != ANY and meaning != op):
        raise ValueError(
            f"meaning must be one of {list(MEANINGS)} (and equal op unless op is {ANY!r}), got {meaning!r}"
        )
    return f"{word}{op}{MEANINGS[meaning](word)}{END}"


def _lines(texts: list[str], answer_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Lines padded with full stops to ``LINE_LEN``: inputs ``(n, LINE_LEN - 1)`` and next-token targets
    of the same shape, ``IGNORE`` after each line's full stop and, with ``answer_only``, before its answer."""
    full = torch.tensor([encode(t + END * (LINE_LEN - len(t))) for t in texts])
    x, y = full[:, :-1], full[:, 1:].clone()
    position = torch.arange(LINE_LEN - 1)
    for row, text in enumerate(texts):
        # Target index i predicts token i + 1. A word of length L puts its operator at position L and
        # the answer's first letter at L + 1 (target index L); the full stop ends the line.
        first = (len(text) - 2) // 2 if answer_only else 0
        y[row, (position < first) | (position > len(text) - 2)] = IGNORE
    return x, y


def pretrain_batch(rng: random.Random, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the pretraining corpus: ``batch_size`` random lines (random words, pretraining
    operators), one per row as in :func:`task_tensors`, with the loss on the whole line (the word
    too: a language model learns its corpus). Inputs and targets ``(batch_size, LINE_LEN - 1)``."""
    texts = []
    for _ in range(batch_size):
        word, op = random_word(rng), rng.choice(PRETRAIN_OPS)
        texts.append(line(word, op, rng.choice(list(OPERATORS)) if op == ANY else op))
    return _lines(texts, answer_only=False)


def task_words(n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """``n`` distinct random words, none in ``exclude`` (so a test set never overlaps training)."""
    rng, words = random.Random(seed), []
    seen = set(exclude)
    while len(words) < n:
        word = random_word(rng)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def task_tensors(words: list[str], op: str, meaning: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One line per word, padded with full stops: inputs ``(n, LINE_LEN - 1)`` and next-token targets,
    ``IGNORE`` everywhere but on the answer and its full stop, so that the loss and the metric only
    look at what the model has to work out (the answer starts at position ``len(word) + 1``, so its
    first target sits at index ``len(word)``)."""
    return _lines([line(word, op, meaning) for word in words], answer_only=True)


def task_data(task: str, n_train: int = 2000, n_test: int = 500, seed: int = 0):
    """Train and test tensors of downstream task ``"A"``, ``"B"`` or ``"C"``: ``(x_train, y_train), (x_test, y_test)``.

    Lines ``word?answer.`` with the answer made by ``MEANINGS[TASKS[task]]``. The test words are drawn
    first (seed ``seed``), then the training words (seed ``seed + 1``), avoiding every test word.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    test = task_words(n_test, seed)
    train = task_words(n_train, seed + 1, exclude=set(test))
    return task_tensors(train, ANY, TASKS[task]), task_tensors(test, ANY, TASKS[task])


@torch.no_grad()
def exact_match(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of lines whose whole answer (and full stop) the model gets right.

    One forward pass with the true prefix (teacher forcing): a line counts only if the argmax is
    right at every answer position, which is exactly when greedy decoding writes the whole answer.
    """
    predicted = model(x).argmax(-1)  # (n, time)
    answer = y != IGNORE
    return ((predicted == y) | ~answer).all(dim=1).float().mean().item()


@torch.no_grad()
def complete(model: torch.nn.Module, word: str, op: str) -> str:
    """Greedy completion of the prompt ``word + op``: the model's answer (up to the full stop)."""
    prompt = torch.tensor([encode(word + op)])
    out = model.generate(prompt, max_new_tokens=len(word) + 1)[0, prompt.shape[1] :]
    return decode(out).split(END)[0]
