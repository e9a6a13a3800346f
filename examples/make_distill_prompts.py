"""Write the prompt lists used to self-distil SmolLM2 (training) and to measure the module (held out).

Provenance: every prompt is built here from the templates and topics below, written for this project; none comes
from a benchmark set. Training and held-out prompts use disjoint templates AND disjoint topics, so held-out text
shares no prompt wording with training text.

    python examples/make_distill_prompts.py   # writes examples/data/{train,heldout}_prompts.txt
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path


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
]
HELDOUT_TOPICS = [
    "glaciers", "jazz music", "composting", "lighthouses", "meditation", "hot air balloons", "coral reefs",
    "board games", "bridges", "typewriters", "octopuses", "wind turbines",
]


def build_prompts(templates: list[str], topics: list[str], seed: int) -> list[str]:
    prompts = [template.format(topic=topic) for template, topic in itertools.product(templates, topics)]
    random.Random(seed).shuffle(prompts)
    return prompts


def main() -> None:
    folder = Path(__file__).parent / "data"
    folder.mkdir(exist_ok=True)
    (folder / "train_prompts.txt").write_text("\n".join(build_prompts(TRAIN_TEMPLATES, TRAIN_TOPICS, 0)) + "\n")
    (folder / "heldout_prompts.txt").write_text("\n".join(build_prompts(HELDOUT_TEMPLATES, HELDOUT_TOPICS, 1)) + "\n")


if __name__ == "__main__":
    main()
