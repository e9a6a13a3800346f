"""Write the prompt lists used to self-distil SmolLM2 (training) and to measure the module (held out).

Provenance: every prompt is built here from the templates, topics and tasks below, written for this project; none
comes from a benchmark set. Training and held-out prompts use disjoint templates AND disjoint topics, so held-out
text shares no prompt wording with training text; no training prompt restates one of the speed benchmark's prompts
(`recycle_hf.bench.BENCHMARK_PROMPTS`).

Training prompts mix four kinds, so that the module sees the registers the assistant answers in: topic prompts
(explanations, stories, lists, letters, ...), small programming tasks, arithmetic word problems and short writing
tasks (rewrite, continue, translate).

    python examples/make_distill_prompts.py   # writes examples/data/{train,heldout}_prompts.txt

Larger sets (a superset of the default one, for a GPU run) come from every template x topic pair and more word
problems, e.g. `--topic-prompts 8520 --word-problems 600 --train-output work/train_prompts_large.txt`.
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path


NUM_TOPIC_PROMPTS = 1700
NUM_WORD_PROBLEMS = 150

TRAIN_TEMPLATES = [
    "Explain {topic} to a curious ten-year-old.",
    "Write a short paragraph about {topic}.",
    "What are three interesting facts about {topic}?",
    "Give me a step-by-step guide to getting started with {topic}.",
    "Write a short story in which {topic} plays an important role.",
    "What are the pros and cons of {topic}?",
    "Summarize the history of {topic} in a few sentences.",
    "Write a friendly email to a colleague recommending {topic}.",
    "What common misconceptions do people have about {topic}?",
    "Describe {topic} using a simple analogy.",
    "Write a haiku and then explain it, on the theme of {topic}.",
    "List some questions a beginner might ask about {topic}, with answers.",
    "What is {topic}?",
    "Tell me about {topic}.",
    "Write a poem about {topic}.",
    "Give me five tips related to {topic}.",
    "What are the main ideas behind {topic}?",
    "Write a dialogue between two friends discussing {topic}.",
    "How has {topic} changed over the last hundred years?",
    "What should a student know about {topic} before an exam?",
    "Write a product description for a book about {topic}.",
    "Create a quiz with three multiple-choice questions about {topic}.",
    "What are some careers connected to {topic}?",
    "Write a speech for a school assembly about {topic}.",
    "Explain the science behind {topic}.",
    "Describe a typical day of someone who works with {topic}.",
    "What are the environmental effects of {topic}?",
    "Give an outline for an essay on {topic}.",
    "Write a tweet about {topic}.",
    "What questions do scientists still have about {topic}?",
    "Write a letter to a newspaper editor about {topic}.",
    "Describe {topic} in exactly three sentences.",
    "What would the world be like without {topic}?",
    "Write a children's rhyme about {topic}.",
    "Define {topic} and give an example.",
    "What are the key terms someone should learn about {topic}?",
    "Write a motivational message inspired by {topic}.",
    "Explain {topic} as if you were a tour guide.",
    "What safety advice would you give about {topic}?",
    "Tell a funny anecdote involving {topic}.",
]
HELDOUT_TEMPLATES = [
    "How would you teach {topic} to an adult who has never heard of it?",
    "Write a blog post introduction about {topic}.",
    "Why does {topic} matter in everyday life?",
    "Compare {topic} with something similar and explain the differences.",
]
TRAIN_TOPICS = [
    "photosynthesis", "the water cycle", "volcanoes", "honeybees", "the moon", "gardening", "baking bread",
    "learning a new language", "chess", "electric cars", "recycling", "the human heart", "rainbows",
    "the internet", "saving money", "running a marathon", "dinosaurs", "the ocean tides", "coffee",
    "public libraries", "solar panels", "birds migrating", "writing poetry", "cooking pasta", "clouds",
    "ancient Egypt", "bicycles", "time management", "friendship", "the stock market", "penguins",
    "mountains", "trains", "music lessons", "sleep", "vaccines", "the printing press", "earthquakes",
    "camping", "kindness", "robots", "maps", "tea", "the solar system", "forests", "teamwork",
    "origami", "electricity", "deserts", "museums",
    "black holes", "the Roman Empire", "climate change", "machine learning", "the immune system", "rivers",
    "democracy", "the French Revolution", "smartphones", "yoga", "chocolate", "elephants", "airplanes",
    "the periodic table", "gravity", "rainforests", "the Olympic Games", "pizza", "cats", "dogs",
    "whales", "ants", "mushrooms", "the Great Wall of China", "the pyramids", "Shakespeare", "opera",
    "painting with watercolors", "photography", "knitting", "video games", "social media", "podcasts",
    "renewable energy", "nuclear power", "the brain", "nutrition", "exercise", "stress", "happiness",
    "negotiation", "public speaking", "job interviews", "budgeting", "credit cards", "inflation",
    "taxes", "small businesses", "marketing", "customer service", "leadership", "first aid",
    "fire safety", "the Internet of Things", "cybersecurity", "passwords", "cloud computing",
    "databases", "the Python programming language", "spreadsheets", "3D printing", "space exploration",
    "Mars", "satellites", "telescopes", "microscopes", "DNA", "evolution", "fossils", "bacteria",
    "viruses", "antibiotics", "hospitals", "nurses", "farming", "wheat", "rice", "bees and pollination",
    "soil", "weather forecasting", "hurricanes", "snow", "ice skating", "football", "basketball",
    "tennis", "swimming", "hiking", "fishing", "sailing", "castles", "knights", "the Vikings",
    "the Renaissance", "the Industrial Revolution", "newspapers", "radio", "television", "cinema",
    "comic books", "fairy tales", "mythology", "the Greek gods", "libraries of the future", "cities",
    "villages", "traffic", "public transport", "architecture", "skyscrapers", "gardens in cities",
    "water pollution", "plastic waste", "endangered species", "zoos", "volunteering", "grandparents",
    "siblings", "moving to a new home", "starting a new school", "homework", "exams", "mathematics",
    "fractions", "prime numbers", "geometry", "statistics", "probability", "algebra", "calculus",
    "chemistry experiments", "magnets", "sound", "light", "color", "the human eye", "teeth",
    "bones", "muscles", "blood", "the lungs", "allergies", "the common cold", "handwashing",
    "breakfast", "vegetables", "fruit", "spices", "bread from around the world", "cheese", "soup",
    "birthday parties", "holidays", "traveling abroad", "airports", "hotels", "packing a suitcase",
    "learning to drive", "cars", "engines", "batteries", "wind", "tornadoes", "caves", "islands",
    "lakes", "waterfalls", "the Arctic", "Antarctica", "polar bears", "kangaroos", "sharks",
    "dolphins", "owls", "butterflies", "spiders", "frogs", "snakes", "horses", "cows", "chickens",
]
HELDOUT_TOPICS = [
    "glaciers", "jazz music", "composting", "lighthouses", "meditation", "hot air balloons", "coral reefs",
    "board games", "bridges", "typewriters", "octopuses", "wind turbines",
]
CODE_TEMPLATES = [
    "Write a Python function that {task}.",
    "Write a JavaScript function that {task}.",
    "How would I write a program that {task}? Show the code and explain it.",
]
CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "computes the factorial of n",
    "returns the n-th Fibonacci number", "counts the vowels in a sentence", "sorts a list of names",
    "finds the largest number in a list", "removes duplicates from a list",
    "computes the average of a list of numbers", "merges two sorted lists",
    "counts how often each word appears in a text", "reads a file and prints its lines",
    "validates an email address", "flattens a nested list", "computes the greatest common divisor",
    "generates a random password", "converts a number to binary", "finds the second smallest element",
    "checks whether two strings are anagrams", "capitalizes every word in a sentence",
    "computes the sum of the digits of a number", "implements binary search", "transposes a matrix",
    "removes whitespace from a string", "computes compound interest", "counts the lines in a file",
    "returns the even numbers of a list", "implements a simple stack class",
]
WRITING_TASKS = [
    "Rewrite this sentence to sound more formal: 'hey, can u send me the report asap?'",
    "Correct the grammar: 'She don't like going to the park on sundays.'",
    "Translate into French: 'Where is the train station?'",
    "Translate into Spanish: 'I would like a cup of coffee, please.'",
    "Continue this story: 'The door creaked open, and a small cat walked in.'",
    "Continue this story: 'On the first day of summer, Maya found an old map in the attic.'",
    "Summarize in one sentence: 'The city council met on Tuesday to discuss the new park. Residents asked for "
    "more trees and a playground, and the council agreed to review the plans next month.'",
    "Write a thank-you note to a teacher.",
    "Write a short review of a restaurant you enjoyed.",
    "Write a shopping list for a week of healthy meals.",
    "Write a recipe for a simple vegetable soup.",
    "Give me a workout plan for a beginner.",
    "Suggest five names for a new coffee shop.",
    "Write an apology message for missing a meeting.",
    "Write a cover letter opening for a software developer job.",
    "Give me ideas for a rainy day with kids.",
    "Write a riddle and its answer.",
    "Tell me a joke about computers.",
    "Describe the feeling of the first snow of winter.",
    "Write an invitation to a birthday party.",
    "Make a study schedule for a student with four exams.",
    "Explain the difference between a virus and a bacterium.",
    "What is the difference between a list and a tuple in Python?",
    "What is the capital of Australia, and what is it known for?",
    "How do I boil an egg?",
    "How do I change a flat tire?",
    "How can I improve my handwriting?",
    "How do I start a conversation with someone new?",
]
WORD_PROBLEM_TEMPLATES = [
    "A shop sells pencils for {a} cents each. How much do {b} pencils cost? Explain your answer.",
    "Tom has {a} apples and gives {b} to his friend. How many apples does he have left? Show your work.",
    "A train travels at {a} kilometers per hour for {b} hours. How far does it go?",
    "There are {a} students and each bus holds {b} students. How many buses are needed?",
    "What is {a} plus {b}? Explain step by step.",
    "What is {a} times {b}? Explain step by step.",
    "A rectangle is {a} meters long and {b} meters wide. What are its area and perimeter?",
    "Sara saves {b} dollars every week. How many weeks does she need to save {a} dollars?",
]


def build_prompts(templates: list[str], topics: list[str], seed: int) -> list[str]:
    prompts = [template.format(topic=topic) for template, topic in itertools.product(templates, topics)]
    random.Random(seed).shuffle(prompts)
    return prompts


def build_word_problems(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = set()
    while len(prompts) < count:
        template = rng.choice(WORD_PROBLEM_TEMPLATES)
        prompts.add(template.format(a=rng.randint(12, 480), b=rng.randint(2, 11)))
    return sorted(prompts)


def build_training_prompts(
    seed: int = 0, num_topic_prompts: int = NUM_TOPIC_PROMPTS, num_word_problems: int = NUM_WORD_PROBLEMS
) -> list[str]:
    topic_prompts = build_prompts(TRAIN_TEMPLATES, TRAIN_TOPICS, seed)[:num_topic_prompts]
    code_prompts = [template.format(task=task) for template, task in itertools.product(CODE_TEMPLATES, CODE_TASKS)]
    prompts = topic_prompts + code_prompts + WRITING_TASKS + build_word_problems(num_word_problems, seed)
    random.Random(seed).shuffle(prompts)
    return prompts


def sample_prompts(prompts: list[str], size: int, seed: int = 0) -> list[str]:
    """A seeded random `size` of `prompts` (e.g. a small replay set of the large list for a CPU run)."""
    sampled = list(prompts)
    random.Random(seed).shuffle(sampled)
    return sampled[:size]


def main() -> None:
    folder = Path(__file__).parent / "data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic-prompts", type=int, default=NUM_TOPIC_PROMPTS, help="template x topic prompts")
    parser.add_argument("--word-problems", type=int, default=NUM_WORD_PROBLEMS)
    parser.add_argument("--train-output", type=Path, default=folder / "train_prompts.txt")
    parser.add_argument("--sample", type=int, default=None, help="write only a seeded random N of the prompts")
    parser.add_argument("--sample-seed", type=int, default=0)
    args = parser.parse_args()
    assert not set(TRAIN_TOPICS) & set(HELDOUT_TOPICS), "training and held-out topics must be disjoint"
    folder.mkdir(exist_ok=True)
    args.train_output.parent.mkdir(parents=True, exist_ok=True)
    prompts = build_training_prompts(num_topic_prompts=args.topic_prompts, num_word_problems=args.word_problems)
    if args.sample is not None:
        prompts = sample_prompts(prompts, args.sample, args.sample_seed)
    args.train_output.write_text("\n".join(prompts) + "\n")
    (folder / "heldout_prompts.txt").write_text("\n".join(build_prompts(HELDOUT_TEMPLATES, HELDOUT_TOPICS, 1)) + "\n")


if __name__ == "__main__":
    main()
