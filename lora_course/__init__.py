"""lora_course: what the notebooks use besides the library ``lora_basics``.

The library (``import lora_basics as lora``) holds LoRA itself and imports nothing from here. This
package holds the course around it:

    notebook.py    setup(): seeds and thread count, the first line of every notebook; what a
                   committed notebook keeps of its metadata
    gpt.py         the tiny GPT-2-style model that lesson 09 adapts (and load_pretrained)
    tasks.py       its procedural corpus and downstream tasks
    diagrams.py    the lessons' diagrams, drawn with matplotlib (LoRA bypass, kernel as a matrix,
                   merge state machine, layers of a GPT block)
    pretrain.py    python -m lora_course.pretrain: rebuilds data/tiny_gpt.pt (make data)
    hf.py          the tiny GPT as a Hugging Face GPT2LMHeadModel (lesson 12)
    memory.py      GPU memory of full fine-tuning, LoRA and QLoRA, per parameter (lessons 11, 14)
    distributed.py torchrun -m lora_course.distributed: LoRA under DDP, checked against one process (lesson 14)
    serving.py     many adapters on one base, three ways (merged copies, swapping, mixed batch), timed
                   side by side (lesson 13, make bench)
    checkers/      the exercise checkers, one module per lesson: a probe (runs the learner's answer) and a
                   judge (compares with lora_basics) per exercise
    exercises.py   python -m lora_course.exercises: student copies from the instructor notebooks
    handout.py     python -m lora_course.handout: the student hand-out zip, without solutions (make handout)
    grader.py      python -m lora_course.grader: grades a class's notebooks (make grade), with
    submission.py    what to grade in a notebook, held against the hand-out,
    sandbox.py       one isolated, time-limited run per notebook,
    runner.py        what runs inside that run: the learner's exercise cells and the probes
"""
