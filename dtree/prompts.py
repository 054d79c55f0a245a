"""A few short built-in demo prompts, so the Speedup arena and the bench work without ../shared/datasets.

Written for this project: arithmetic word problems, a small coding task and chat questions, short enough that a CPU
run on the embedded model takes seconds per prompt.
"""

from __future__ import annotations

DEMO_PROMPTS: tuple[str, ...] = (
    "A baker makes 24 muffins and sells 3 boxes of 6 muffins each. How many muffins are left?",
    "Tom reads 15 pages a day. How many days does he need to finish a book of 120 pages?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Write a Python function that returns the sum of the even numbers in a list.",
    "What is the difference between a list and a tuple in Python?",
    "Give three tips for sleeping better.",
    "Explain in two sentences why the sky is blue.",
    "Sara has 5 red pens and twice as many blue pens. How many pens does she have in total?",
)
