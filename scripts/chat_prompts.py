"""Generate chat-style prompts from templates, for drafter training (issue 3: "prompts generated from templates").

Drafter v5 never saw chat: on MT-Bench first turns its chain tau was about 1.1. This script writes open-ended chat
requests (explain, compare, advise, write an email / a story / a poem, plan, role-play, summarise, list ideas,
describe a process) by filling hand-written task templates with subjects from hand-written topic lists, in a seeded
shuffle. The target then answers them (``python -m dtree.train --phase gen --prompts <out>``): self-distillation
data for chat. No evaluation prompt is used: every prompt is built here from the lists below; when the shared
MT-Bench file is beside the checkout, a prompt equal to one of its turns would be dropped (none is, by construction).

    python scripts/chat_prompts.py --out data/chat/prompts.jsonl [--limit N] [--seed 0]

Writes one JSON object per line: ``{"prompt": ..., "source": "template index:subject"}``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

MT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mt_bench" / "question.jsonl"

SCIENCE = ["photosynthesis", "black holes", "plate tectonics", "the water cycle", "vaccines", "climate change",
           "DNA replication", "the greenhouse effect", "electric circuits", "the immune system", "volcanoes",
           "quantum entanglement", "natural selection", "the speed of light", "antibiotic resistance", "tides",
           "nuclear fusion", "the human heart", "earthquakes", "rainbows", "magnetism", "the Big Bang", "enzymes",
           "ocean currents", "solar panels", "batteries", "sound waves", "gravity", "cloud formation", "neurons",
           "machine learning", "encryption", "the internet", "blockchains", "GPS", "3D printing", "recycling",
           "compound interest", "inflation", "supply and demand", "probability", "prime numbers", "fractals"]
HISTORY = ["the printing press", "the Roman Empire", "the Industrial Revolution", "the Silk Road", "the Renaissance",
           "the invention of the telephone", "the moon landing", "ancient Egypt", "the French Revolution",
           "the Cold War", "the history of the bicycle", "the Olympic Games", "the invention of paper",
           "the first computers", "the history of jazz", "medieval castles", "the age of exploration",
           "the history of coffee", "the invention of photography", "the spread of agriculture"]
EVERYDAY = ["starting a vegetable garden", "learning a new language", "saving money on groceries",
            "preparing for a job interview", "training for a 5k run", "organising a small wedding",
            "moving to a new city", "adopting a dog", "working from home", "sleeping better", "cooking for a family",
            "planning a birthday party", "reducing screen time", "starting a small business", "reading more books",
            "learning to play the guitar", "keeping houseplants alive", "making friends as an adult",
            "writing a CV", "managing stress before exams", "buying a used car", "teaching a child to swim",
            "decluttering a home", "hosting a dinner party", "travelling on a budget", "public speaking"]
PLACES = ["Kyoto", "Lisbon", "Iceland", "the Scottish Highlands", "Cape Town", "Vancouver", "Rome", "Peru",
          "New Zealand", "Istanbul", "Norway", "Morocco", "Vietnam", "Barcelona", "Chile", "Prague", "Kenya",
          "the Greek islands", "Montreal", "Seoul"]
ROLES = ["a museum guide", "a ship's captain", "a medieval blacksmith", "a park ranger", "a detective",
         "a pastry chef", "a space station commander", "a librarian", "a football coach", "a travel agent",
         "a time traveller from 1900", "a friendly robot", "a wise old gardener", "a news reporter",
         "a mountain guide", "a customer support agent", "a history teacher", "a personal trainer"]
THINGS = ["a reusable water bottle", "a smart thermostat", "noise-cancelling headphones", "a folding bicycle",
          "a solar lantern", "a language-learning app", "an electric kettle", "a standing desk", "a board game",
          "a hiking backpack", "a coffee grinder", "a weather station", "a sleep tracker", "a bread maker"]

TEMPLATES: list[tuple[str, list[str]]] = [
    ("Explain {x} in simple terms.", SCIENCE),
    ("Can you explain how {x} works to a ten-year-old?", SCIENCE),
    ("What are the most common misconceptions about {x}?", SCIENCE),
    ("Write a short paragraph that summarises {x}.", SCIENCE + HISTORY),
    ("Give me three interesting facts about {x}.", SCIENCE + HISTORY),
    ("Why was {x} important? Answer in a few paragraphs.", HISTORY),
    ("Describe the main causes and consequences of {x}.", HISTORY),
    ("Write a short story set during {x}.", HISTORY),
    ("What advice would you give someone who is {x}?", EVERYDAY),
    ("Give me a step-by-step plan for {x}.", EVERYDAY),
    ("What are the pros and cons of {x}?", EVERYDAY),
    ("List five tips for {x}, with a sentence on each.", EVERYDAY),
    ("Write an email to a friend asking for help with {x}.", EVERYDAY),
    ("Write a short motivational message for someone who is {x}.", EVERYDAY),
    ("Plan a three-day trip to {x}, with things to see each day.", PLACES),
    ("Write a travel blog post about a weekend in {x}.", PLACES),
    ("Describe the food and culture of {x}.", PLACES),
    ("Write a short poem about {x}.", PLACES + SCIENCE),
    ("Pretend you are {x}. Introduce yourself and describe a typical day.", ROLES),
    ("You are {x}. A visitor asks what you enjoy most about your work. Reply in character.", ROLES),
    ("Write a dialogue between {x} and a curious child.", ROLES),
    ("Write a persuasive product description for {x}.", THINGS),
    ("Compare {x} with the usual alternative and recommend one.", THINGS),
    ("Write a customer review of {x}, mentioning one good and one bad point.", THINGS),
    ("Write a short speech about why {x} matters.", SCIENCE + EVERYDAY),
    ("Summarise the arguments for and against {x} in a balanced way.", EVERYDAY + THINGS),
    ("Suggest five creative project ideas related to {x}.", SCIENCE + HISTORY + PLACES),
    ("What questions should I ask before {x}?", EVERYDAY),
    ("Write a haiku and then explain its imagery. The subject is {x}.", SCIENCE + PLACES),
    ("Describe {x} as if you were writing an encyclopedia entry.", SCIENCE + HISTORY + PLACES),
]


def mt_bench_turns() -> set[str]:
    """Every MT-Bench turn text (empty when the shared file is absent)."""
    if not MT_BENCH.exists():
        return set()
    out: set[str] = set()
    with open(MT_BENCH) as f:
        for line in f:
            if line.strip():
                out.update(t.strip() for t in json.loads(line).get("turns", []))
    return out


def build(seed: int = 0) -> list[dict]:
    """Every (template, subject) prompt, deduplicated, in a seeded shuffle."""
    seen, rows = set(), []
    banned = mt_bench_turns()
    for ti, (tpl, subjects) in enumerate(TEMPLATES):
        for x in subjects:
            text = tpl.format(x=x)
            if text in seen or text in banned:
                continue
            seen.add(text)
            rows.append({"prompt": text, "source": f"{ti}:{x}"})
    random.Random(seed).shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--limit", type=int, default=0, help="keep the first N after the shuffle (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.limit < 0:
        ap.error("--limit must be >= 0")
    rows = build(args.seed)
    if args.limit:
        rows = rows[:args.limit]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} prompts -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
