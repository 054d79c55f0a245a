"""Generate chat-style prompts from templates, for drafter training (issue 3: "prompts generated from templates").

Drafter v5 never saw chat: on MT-Bench first turns its chain tau was about 1.1. This script writes open-ended chat
requests (explain, compare, advise, write an email / a story / a poem, plan, role-play, summarise, list ideas,
describe a process) by filling hand-written task templates with subjects from hand-written topic lists, in a seeded
shuffle. The target then answers them (``python -m dtree.train --phase gen --prompts <out>``): self-distillation
data for chat. No evaluation prompt is used: every prompt is built here from the lists below; when the shared
MT-Bench file is beside the checkout, a prompt equal to one of its turns would be dropped (none is, by construction).

    python scripts/chat_prompts.py --out data/chat/prompts.jsonl [--limit N] [--seed 0] [--exclude FILE,FILE]

Writes one JSON object per line: ``{"prompt": ..., "source": "template index:subject"}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from code_prompts import read_exclude, write_prompts  # noqa: E402 -- the --exclude reader and writer both scripts use

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

HUMANITIES = ["utilitarianism", "the social contract", "existentialism", "Stoicism", "the tragedy of the commons",
              "game theory", "the separation of powers", "opportunity cost", "monetary policy", "globalisation",
              "the Socratic method", "cultural relativism", "free will", "the placebo effect", "cognitive dissonance",
              "confirmation bias", "Maslow's hierarchy of needs", "the bystander effect", "fiscal policy",
              "universal basic income", "comparative advantage", "the scientific method", "impressionist painting",
              "Shakespeare's tragedies", "the hero's journey", "magical realism", "the Gothic novel",
              "minimalism in design", "Baroque music", "the Enlightenment", "behavioural economics",
              "the trolley problem", "sunk cost fallacy", "division of labour", "propaganda", "urbanisation"]
PAIRS = ["weather and climate", "a virus and a bacterium", "speed and velocity", "a simile and a metaphor",
         "stocks and bonds", "mitosis and meiosis", "empathy and sympathy", "a democracy and a republic",
         "a crocodile and an alligator", "memory and storage in a computer", "an atom and a molecule",
         "a comet and an asteroid", "inflation and deflation", "latitude and longitude",
         "baking soda and baking powder", "a psychologist and a psychiatrist", "renewable and non-renewable energy",
         "debit and credit cards", "an epidemic and a pandemic", "a hurricane and a tornado",
         "nuclear fission and nuclear fusion", "correlation and causation", "a theory and a hypothesis",
         "a frog and a toad", "a novel and a novella", "weather forecasts and climate models", "AC and DC current",
         "a lease and a mortgage", "introverts and extroverts", "a tsunami and a tidal wave"]
ISSUES = ["remote work", "four-day work weeks", "banning cars from city centres", "school uniforms",
          "social media for teenagers", "nuclear power", "funding space exploration", "homework for young children",
          "self-driving cars", "tipping in restaurants", "plastic bag bans", "zoos", "standardised testing",
          "year-round schooling", "artificial intelligence in schools", "free public transport", "violent video games",
          "online learning", "fast fashion", "daylight saving time", "a sugar tax", "voting at sixteen"]
NAMES = ["Maria Lopez", "Kenji Sato", "Amara Okafor", "Liam O'Brien", "Priya Nair", "Lukas Becker", "Sofia Rossi",
         "Omar Haddad", "Elena Petrova", "Daniel Kim"]
JOBS = ["opened a bakery", "started a bicycle repair shop", "founded a small software company", "became a nurse",
        "opened a bookshop", "started teaching mathematics", "launched a food truck", "joined a research lab"]
FACTS = [f"{n}, born in {1960 + 3 * i}, moved to {PLACES[(5 * i + j) % len(PLACES)]} in {1990 + 2 * i + j}, "
         f"{JOBS[(i + 3 * j) % len(JOBS)]} there {2 + j} years later and now employs {4 + 3 * i + j} people."
         for i, n in enumerate(NAMES) for j in range(4)]

# Added in session 26 (drafter v15): subjects and templates for MT-Bench's other categories (reasoning, math,
# coding, extraction, STEM, humanities, writing, role-play). None is an MT-Bench turn.
OBJECTS = ["apples", "pencils", "marbles", "stickers", "books", "cupcakes", "tickets", "stamps", "seashells", "coins"]
PEOPLE = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Leo"]
WORD_PROBLEMS = [f"{PEOPLE[i % 12]} has {12 + 7 * i} {OBJECTS[i % 10]}. {PEOPLE[(i + 5) % 12]} gives "
                 f"{PEOPLE[i % 12]} {3 + i % 9} more, and then {PEOPLE[i % 12]} shares half of them equally with "
                 f"{2 + i % 3} friends. How many {OBJECTS[i % 10]} does each friend get?" for i in range(72)] + [
                 f"A train travels {60 + 15 * i} km in {1 + i % 4} hours, then {40 + 10 * i} km in {2 + i % 3} "
                 f"hours. What is its average speed for the whole trip?" for i in range(36)] + [
                 f"A shop sells a jacket for ${40 + 5 * i}. It is discounted by {10 + 5 * (i % 5)}% and then a "
                 f"{5 + i % 4}% sales tax is added. What is the final price?" for i in range(36)]
MATH_TOPICS = ["the Pythagorean theorem", "solving quadratic equations", "the area of a circle", "percentages",
               "the sum of an arithmetic series", "prime factorisation", "the least common multiple",
               "conditional probability", "the mean, median and mode", "simple interest", "ratios and proportions",
               "linear equations with two unknowns", "the volume of a cylinder", "logarithms", "exponents",
               "the binomial coefficient", "the expected value of a dice roll", "the slope of a line",
               "converting fractions to decimals", "the angles of a triangle"]
CODE_TASKS = ["reverses a linked list", "checks whether a string is a palindrome", "merges two sorted lists",
              "counts the words in a text file", "finds the second largest number in a list",
              "removes duplicates from a list while keeping order", "computes the nth Fibonacci number",
              "validates an email address with a regular expression", "flattens a nested list",
              "returns the most frequent character in a string", "implements binary search",
              "converts a Roman numeral to an integer", "checks whether two strings are anagrams",
              "computes the factorial of a number iteratively", "rotates a matrix by 90 degrees",
              "finds all prime numbers below n", "parses a CSV line into fields", "groups words by their first letter",
              "computes the running average of a stream of numbers", "finds the longest common prefix of strings",
              "implements a simple stack class", "sorts a list of dictionaries by a key",
              "counts vowels in a sentence", "checks whether brackets in a string are balanced"]
LANGUAGES = ["Python", "JavaScript", "C++", "Java", "Rust", "Go"]
RIDDLES = ["If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
           "A farmer has 17 sheep and all but 9 run away. How many are left?",
           "Which is heavier, a kilogram of feathers or a kilogram of iron?",
           "If you overtake the person in second place in a race, what place are you in?",
           "Three friends split a bill of $45 and each pays $15. The waiter returns $5 and each friend takes $1 back. "
           "Where did the missing dollar go?",
           "A bat and a ball cost $1.10 in total and the bat costs $1.00 more than the ball. How much is the ball?",
           "If it takes 5 machines 5 minutes to make 5 widgets, how long do 100 machines need for 100 widgets?",
           "Mary's father has five daughters: Nana, Nene, Nini, Nono. What is the fifth daughter's name?",
           "A clock shows 3:15. What is the angle between the hour and the minute hands?",
           "You have two ropes that each burn in an hour, unevenly. How do you measure 45 minutes?",
           "There are three boxes labelled apples, oranges and mixed, and every label is wrong. You may draw one fruit "
           "from one box. How do you relabel them?",
           "If today is Wednesday, what day will it be 100 days from now?"]
TABLES = [f"name={n}; city={PLACES[(3 * i) % 20]}; age={22 + 4 * i}; team={['sales', 'design', 'support'][i % 3]}"
          for i, n in enumerate(NAMES)]
GENRES = ["science fiction", "mystery", "fantasy", "romance", "horror", "comedy", "historical fiction", "fable"]

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
    ("Explain the concept of {x} and give an everyday example.", HUMANITIES),
    ("How would a critic argue against {x}? Then reply to that criticism.", HUMANITIES),
    ("Write an essay outline on {x}, with a thesis and three main points.", HUMANITIES + HISTORY),
    ("Explain {x} to a high school student, then ask two questions to check their understanding.",
     HUMANITIES + SCIENCE),
    ("Write a quiz of five multiple-choice questions about {x}, with the answers.", HUMANITIES + SCIENCE + HISTORY),
    ("Give a short introductory lecture on {x}.", HUMANITIES + SCIENCE),
    ("What is the difference between {x}? Explain with examples.", PAIRS),
    ("Compare {x} in a short table, then summarise the key difference in one sentence.", PAIRS),
    ("A friend keeps confusing {x}. How would you explain the difference to them?", PAIRS),
    ("Write a short opinion piece about {x}.", ISSUES),
    ("Draft a letter to a local newspaper arguing for or against {x}.", ISSUES),
    ("What are the strongest arguments for and against {x}? Which side do you find more convincing, and why?",
     ISSUES),
    ("Write a debate opening statement in favour of {x}.", ISSUES),
    ("What would be the likely consequences of {x} becoming common everywhere? Reason step by step.", ISSUES),
    ("Extract the person's name, the place, the years and the number of employees from this text, as JSON: {x}",
     FACTS),
    ("Summarise this text in one sentence, then list every number in it: {x}", FACTS),
    ("Rewrite this text as a short, friendly biography for a company website: {x}", FACTS),
    ("Write a short story whose main character is {x}.", ROLES),
    ("You are {x}. Give your best advice to a beginner in your field, in character.", ROLES),
    ("As {x}, write a short diary entry about an unexpected day at work.", ROLES),
    ("Write a job advertisement for {x}.", ROLES),
    ("What mistakes do beginners make when {x}, and how can they avoid them?", EVERYDAY),
    ("Create a four-week plan for {x}.", EVERYDAY),
    ("Write a short children's story that teaches a lesson about {x}.", EVERYDAY + SCIENCE),
    ("What should a first-time visitor to {x} know before going?", PLACES),
    ("Write a short story that begins with a traveller arriving in {x} at night.", PLACES),
    ("Write a product announcement for {x} for a company blog.", THINGS),
    ("Write a limerick about {x}, then explain why it is funny.", THINGS + ROLES),
    ("Write a short advertisement script for {x}, for a 30-second radio spot.", THINGS),
    ("Rewrite this sentence in a formal academic tone: 'honestly {x} is super interesting and way more important "
     "than people think.'", SCIENCE + HUMANITIES),
    ("Write a tweet, a headline and a one-paragraph news summary about a new discovery in {x}.", SCIENCE),
    # session 26 (v15)
    ("Solve this problem and show your reasoning step by step: {x}", WORD_PROBLEMS),
    ("Explain {x} and work through one example.", MATH_TOPICS),
    ("Write a practice problem about {x}, then solve it.", MATH_TOPICS),
    ("What is a common mistake students make with {x}? Show the right method.", MATH_TOPICS),
    ("Write a Python function that {x}. Explain how it works.", CODE_TASKS),
    ("Write a function that {x}, with a docstring and two example calls.", CODE_TASKS),
    ("What is the time complexity of a function that {x}? Give an efficient implementation.", CODE_TASKS),
    ("How would you write a program that {x} in {y}?", CODE_TASKS),
    ("Answer this riddle and explain your reasoning: {x}", RIDDLES),
    ("Think step by step and answer: {x}", RIDDLES),
    ("Turn this record into a JSON object with the same fields: {x}", TABLES),
    ("Write one sentence introducing the person in this record: {x}", TABLES),
    ("Write the opening paragraph of a {x} novel.", GENRES),
    ("Give me three plot ideas for a {x} short story.", GENRES),
    ("Write a short {x} story in exactly five sentences.", GENRES),
    ("Describe the typical features of {x} writing and name a famous example.", GENRES),
    ("Explain how {x} relates to everyday life, in three short paragraphs.", SCIENCE + HUMANITIES),
    ("Write a blog post with a title and three sections about {x}.", EVERYDAY + SCIENCE),
    ("Imagine you are {x} giving a tour to a group of students. What do you say?", ROLES),
    ("Write a formal complaint letter about {x} that stopped working after a week.", THINGS),
    ("Write a short, polite email declining an invitation to discuss {x}.", ISSUES),
    ("Explain {x} using an analogy, then point out where the analogy breaks down.", SCIENCE + HUMANITIES),
    ("Write a short dialogue between a teacher and a student about {x}.", SCIENCE + HUMANITIES + HISTORY),
    ("What are three open questions or debates about {x} today?", SCIENCE + HUMANITIES),
    ("Summarise {x} in five bullet points for a revision sheet.", SCIENCE + HUMANITIES + HISTORY),
    ("How has our understanding of {x} changed over time?", SCIENCE + HUMANITIES),
    ("Write a short news article from the point of view of someone living through {x}.", HISTORY),
    ("Write a checklist for {x}.", EVERYDAY),
    ("My friend says {x} is too hard. Write an encouraging reply with practical first steps.", EVERYDAY),
    ("Write a packing list and a budget for a week in {x}.", PLACES),
    ("Describe a perfect day in {x} from morning to night.", PLACES),
    ("Write a user manual section explaining how to use {x}.", THINGS),
    ("Write a sonnet about {x}.", SCIENCE + PLACES + HISTORY),
    ("Write a one-minute speech for a school assembly about {x}.", ISSUES + SCIENCE),
    ("Write a short essay arguing against {x}, then a short rebuttal.", ISSUES),
    ("Explain the history behind {x} and how it is debated today.", ISSUES + HUMANITIES),
    ("Write a podcast introduction for an episode about {x}.", SCIENCE + HISTORY + HUMANITIES),
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


def build(seed: int = 0, exclude: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """Every (template, subject) prompt, deduplicated and without the ``exclude`` texts, in a seeded shuffle."""
    seen, rows = set(), []
    banned = mt_bench_turns()
    for ti, (tpl, subjects) in enumerate(TEMPLATES):
        for x in subjects:
            for y in (LANGUAGES if "{y}" in tpl else [""]):
                text = tpl.format(x=x, y=y)
                if text in seen or text in banned or text in exclude:
                    continue
                seen.add(text)
                rows.append({"prompt": text, "source": f"{ti}:{x}" + (f":{y}" if y else "")})
    random.Random(seed).shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--limit", type=int, default=0, help="keep the first N after the shuffle (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", default="", help="comma list of JSONL prompt files whose prompts are left out (e.g. "
                    "a first set already answered, so a second set has only new prompts)")
    args = ap.parse_args(argv)
    if args.limit < 0:
        ap.error("--limit must be >= 0")
    names = [n.strip() for n in args.exclude.split(",")] if args.exclude.strip() else []
    if "" in names:
        ap.error(f"--exclude: empty item in {args.exclude!r} (a stray comma?)")
    try:
        exclude = read_exclude(names, args.out)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    rows = build(args.seed, exclude)
    if args.limit:
        rows = rows[:args.limit]
    if not rows:
        ap.error("--exclude leaves no prompt: every template prompt is already in those files (nothing written)")
    write_prompts(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
