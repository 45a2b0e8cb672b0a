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
    checkers/      the exercise checkers, one module per lesson
    exercises.py   python -m lora_course.exercises: student copies from the instructor notebooks
    grader.py      python -m lora_course.grader: grades a class's notebooks (make grade)
"""
