"""The instruction miniature shipped in ``ptobj/data_pipeline/records_data/flan_tiny/``: eight small
labelled datasets in four task clusters, synthetic, written from the word lists below with a
fixed seed. ``python tests/flan_tiny_data.py`` writes them; ``tests/test_flan.py`` checks that the
shipped files are what this writes.

    sentiment  review_sentiment (96: short reviews of meals and products, positive / negative)
               movie_sentiment  (48: one-line film reviews, label 0 = negative, 1 = positive)
    nli        nli_pairs        (64: premise / hypothesis, 0 entailment, 1 neutral, 2 contradiction)
               rte_pairs        (48: sentence pairs, 0 entailment, 1 not entailment)
    topic      headline_topic   (96: news headlines: sports, politics, science, business)
               question_topic   (48: quiz questions: math, history, geography, biology)
    qa         arithmetic       (160: a op b with small numbers, the answer as digits)
               reading_qa       (64: a two-sentence story, a question, a one-word answer from it)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "ptobj" / "data_pipeline" / "records_data" / "flan_tiny"


def distinct(n: int, make) -> list[dict]:
    """``make(i)`` for i = 0 .. n-1, drawn again until each record differs from the ones before."""
    out, seen = [], set()
    for i in range(n):
        for _ in range(1000):
            r = make(i)
            key = json.dumps(r, sort_keys=True)
            if key not in seen:
                break
        else:
            raise RuntimeError(f"no new record for index {i}: widen the word lists")
        seen.add(key)
        out.append(r)
    return out


def review_sentiment(rng: random.Random) -> list[dict]:
    kinds = {  # things, then (what was said, what followed) when it went well, and when it did not
        "meal": (["soup", "pasta", "pizza", "coffee", "salad", "cake", "burger", "tea"],
                 [("fresh and tasty", "I would order it again."), ("warm and delicious", "We will come back soon."),
                  ("great value", "The staff were friendly."), ("perfect", "Best in town.")],
                 [("cold and bland", "I will not order it again."), ("stale", "The staff were rude."),
                  ("overpriced", "Not worth the money."), ("burnt", "We left hungry.")]),
        "product": (["lamp", "chair", "kettle", "jacket", "backpack", "blender", "phone case", "desk"],
                    [("well made", "It works perfectly."), ("exactly as described", "Very happy with it."),
                     ("great value", "I recommend it to everyone."), ("sturdy and light", "Worth every penny.")],
                    [("badly made", "It broke after two days."), ("nothing like the photo", "I want a refund."),
                     ("late and damaged", "Very disappointed."), ("flimsy", "It fell apart at once.")]),
    }
    def make(i):
        label = "positive" if i % 2 == 0 else "negative"
        things, good, bad = kinds["meal" if i % 4 < 2 else "product"]
        adj, tail = rng.choice(good if label == "positive" else bad)
        return {"review": f"The {rng.choice(things)} was {adj}. {tail}", "label": label}
    return distinct(96, make)


def movie_sentiment(rng: random.Random) -> list[dict]:
    openers = ["This film", "The movie", "This comedy", "The thriller", "This drama", "The sequel"]
    good = ["is a joy from start to finish", "has a clever plot and warm characters", "made me laugh the whole time",
            "is beautifully shot and moving", "kept me on the edge of my seat", "is the best I have seen this year"]
    bad = ["is slow and boring", "has a silly plot and flat acting", "put me to sleep",
           "is far too long and dull", "wastes a good cast", "is the worst I have seen this year"]
    def make(i):
        label = 1 if i % 2 == 0 else 0
        return {"text": f"{rng.choice(openers)} {rng.choice(good if label else bad)}.", "label": label}
    return distinct(48, make)


# (subject, its general form, plural), (activity, a general form, a clashing one), places, extras (neutral)
_SUBJECTS = [("A man", "A person", False), ("A woman", "A person", False), ("Two kids", "Some kids", True),
             ("An old man", "A person", False), ("A girl", "A child", False), ("A boy", "A child", False),
             ("Two women", "Some people", True), ("A chef", "A person", False)]
_ACTS = [("play{s} a guitar", "play{s} music", "sleep{s}"), ("read{s} a book", "read{s}", "swim{s}"),
         ("ride{s} a bike", "ride{s}", "sit{s} still"), ("eat{s} an apple", "eat{s}", "sing{s}"),
         ("paint{s} a wall", "paint{s}", "run{s}"), ("wash{es} a car", "clean{s}", "dance{s}")]
_PLACES = ["in the park", "on the beach", "in the kitchen", "at the station", "in the garden", "on the street"]
_EXTRAS = ["for the first time", "with a friend", "because it is sunny", "before lunch", "to win a prize"]


def _verb(phrase: str, plural: bool) -> str:
    return phrase.replace("{s}", "" if plural else "s").replace("{es}", "" if plural else "es")


def nli_pairs(rng: random.Random) -> list[dict]:
    def make(i):
        (subj, general, plural), acts = rng.choice(_SUBJECTS), rng.choice(_ACTS)
        act, act_general, clash = (_verb(a, plural) for a in acts)
        place, be = rng.choice(_PLACES), "are" if plural else "is"
        premise = f"{subj} {act} {place}."
        label = i % 3
        if label == 0:
            hypothesis = rng.choice([f"{general} {act_general}.", f"{general} {be} {place}."])
        elif label == 1:
            hypothesis = f"{subj} {act} {rng.choice(_EXTRAS)}."
        else:
            hypothesis = f"{subj} {clash} {place}."
        return {"premise": premise, "hypothesis": hypothesis, "label": label}
    return distinct(64, make)


def rte_pairs(rng: random.Random) -> list[dict]:
    names = ["Maria", "Tom", "Aisha", "Ken", "Lena", "Omar", "Sara", "Ivan"]
    things = [("a red car", "a car", "a blue car"), ("a small house", "a house", "a large house"),
              ("an old piano", "a piano", "a new piano"), ("a black dog", "a dog", "a white dog")]
    months = ["May", "June", "March", "October"]
    def make(i):
        name, (thing, general, other), month = rng.choice(names), rng.choice(things), rng.choice(months)
        s1 = f"{name} bought {thing} in {month}."
        if i % 2 == 0:
            s2, label = rng.choice([f"{name} owns {general}.", f"{name} bought {general}."]), 0
        else:
            s2, label = rng.choice([f"{name} sold {thing}.", f"{name} bought {other}.", f"{name} never bought {general}."]), 1
        return {"sentence1": s1, "sentence2": s2, "label": label}
    return distinct(48, make)


_HEADLINES = {
    "sports": ["{team} win the cup final after a late goal", "{team} sign a new striker", "{team} lose at home again",
               "Record crowd watches {team} in the derby", "Coach of {team} resigns after bad season"],
    "politics": ["Parliament votes on new {topic} law", "Minister promises more money for {topic}",
                 "Election campaign turns to {topic}", "Senate blocks {topic} reform", "Protest over {topic} plan"],
    "science": ["Scientists find {find} on a distant moon", "New telescope spots {find}",
                "Study links sleep to {find}", "Researchers map {find} in the deep sea", "Lab grows {find}"],
    "business": ["{firm} shares rise after strong sales", "{firm} cuts jobs as profits fall",
                 "{firm} opens a new factory", "{firm} buys a rival for two billion", "Prices rise at {firm}"],
}
_FILL = {"team": ["United", "City", "Rovers", "the Lions", "the Eagles"],
         "topic": ["housing", "tax", "school", "health", "transport"],
         "find": ["water ice", "ancient microbes", "a new crystal", "strange signals", "rare fungi"],
         "firm": ["Acme", "Globex", "Initech", "Umbra", "Vantage"]}


def headline_topic(rng: random.Random) -> list[dict]:
    topics = list(_HEADLINES)

    def make(i):
        label = topics[i % 4]
        text = rng.choice(_HEADLINES[label])
        for k, v in _FILL.items():
            text = text.replace("{" + k + "}", rng.choice(v))
        return {"headline": text[0].upper() + text[1:], "label": label}
    return distinct(96, make)


_QUESTIONS = {
    "math": ["How many sides does a hexagon have?", "What is half of forty?", "Is seven a prime number?",
             "What is the area of a square with side three?", "How many degrees are in a right angle?",
             "What is ten percent of ninety?", "How many minutes are in two hours?", "Is zero an even number?",
             "What is the square root of eighty one?", "How many corners does a cube have?",
             "What is three cubed?", "How many edges does a triangle have?"],
    "history": ["Who was the first emperor of Rome?", "When did the Second World War end?",
                "Who built the pyramids of Giza?", "Which empire did Genghis Khan found?",
                "When did people first land on the moon?", "Who wrote the Magna Carta?",
                "Which wall fell in Berlin in 1989?", "Who was Cleopatra?", "What was the Silk Road?",
                "When did the Roman Empire fall?", "Who led the French army at Waterloo?", "What was the Bronze Age?"],
    "geography": ["Which river flows through Cairo?", "What is the capital of Canada?",
                  "Which ocean lies west of Portugal?", "What is the highest mountain on Earth?",
                  "Which desert covers much of northern Africa?", "How many continents are there?",
                  "Which country has the most people?", "What is the longest river in Europe?",
                  "Which city lies on two continents?", "Where is the Amazon rainforest?",
                  "What is the capital of Japan?", "Which sea lies between Europe and Africa?"],
    "biology": ["Why do plants need sunlight?", "How many legs does a spider have?", "What do red blood cells carry?",
                "Which organ pumps blood?", "What do bees collect from flowers?", "How do fish breathe?",
                "What is the largest mammal?", "Which part of the plant takes in water?",
                "What do caterpillars turn into?", "Why do birds migrate?", "What does the liver do?",
                "How many chambers does a human heart have?"],
}


def question_topic(rng: random.Random) -> list[dict]:
    out = [{"question": q, "label": label} for label, qs in _QUESTIONS.items() for q in qs]
    rng.shuffle(out)
    return out


def arithmetic(rng: random.Random) -> list[dict]:
    ops = [("plus", "+", lambda a, b: a + b), ("minus", "-", lambda a, b: a - b), ("times", "*", lambda a, b: a * b)]
    def make(i):
        word, sym, f = ops[i % 3]
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        if word == "minus" and b > a:
            a, b = b, a
        return {"x": a, "op": word, "symbol": sym, "y": b, "answer": str(f(a, b))}
    return distinct(160, make)


def reading_qa(rng: random.Random) -> list[dict]:
    names = ["Mia", "Leo", "Zara", "Sam", "Nina", "Omar", "Ava", "Ben"]
    objects = ["kite", "ball", "hat", "bike", "cup", "book"]
    colors = ["red", "green", "blue", "yellow", "black", "white"]
    places = ["park", "school", "garden", "market", "library", "beach"]
    days = ["Monday", "Tuesday", "Friday", "Sunday"]
    def make(i):
        name, obj, color, place, day = (rng.choice(names), rng.choice(objects), rng.choice(colors),
                                        rng.choice(places), rng.choice(days))
        context = f"{name} has a {color} {obj}. On {day}, {name} took it to the {place}."
        question, answer = [(f"What color is {name}'s {obj}?", color), (f"Where did {name} take the {obj}?", place),
                            (f"On which day did {name} go to the {place}?", day),
                            (f"What does {name} have?", f"a {color} {obj}")][i % 4]
        return {"context": context, "question": question, "answer": answer}
    return distinct(64, make)


DATASETS = {"review_sentiment": review_sentiment, "movie_sentiment": movie_sentiment, "nli_pairs": nli_pairs,
            "rte_pairs": rte_pairs, "headline_topic": headline_topic, "question_topic": question_topic,
            "arithmetic": arithmetic, "reading_qa": reading_qa}


def generate() -> dict[str, str]:
    """{file name: its content}, one .jsonl per dataset (each from its own seeded generator)."""
    return {f"{name}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make(random.Random(f"flan_tiny:{name}")))
            for name, make in DATASETS.items()}


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (OUT / name).write_text(text)
        print(f"{OUT / name}: {text.count(chr(10))} records")
