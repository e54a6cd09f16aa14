"""The toy world's tasks: keyed running sums (reasoning) and notes with IFEval-type constraints.

Reasoning needs a chain of thought: 'a=3 b=5 c=2' -> 'a+b: 3 + 5 = 8' / '+c: 8 + 2 = 10'. A direct
answer needs the whole sum in one step, which the tiny models cannot do. Instructions are checked by
the real IFEval checkers; each prompt's ids and kwargs travel with it.

Skills, not templates: every instruction type has several phrasings and the note request several forms;
phrasings, forms and topics are partitioned into training / calibration / held-out evaluation (PARTS), so a
held-out prompt uses wording and a subject that no training or calibration text contains (tests/test_toy_split.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

E = END_PHRASE = "Is there anything else I can help with?"
KEYS = "abcde"
PARTS = ("train", "calib", "eval")  # training (base, LRM, ITM), calibration (Stage 1/2), held-out evaluation

# Topics, partitioned by construction: a held-out (eval) topic never appears in any training or calibration
# text, so a held-out prompt tests the skill on a subject the trio never wrote about.
TOPIC_SPLIT: dict[str, list[str]] = {
    "train": ["river", "mountain", "city", "garden", "forest", "ocean", "robot", "library", "market", "winter",
              "castle", "island", "bridge", "village", "desert", "harbor", "school", "kitchen", "train", "museum",
              "lake", "valley", "farm", "station", "park", "tower", "beach", "bakery"],
    "calib": ["theater", "airport", "cafe", "stadium"],
    "eval": ["factory", "temple", "canyon", "meadow", "glacier", "volcano", "orchard", "lighthouse"],
}
TOPICS = [t for part in PARTS for t in TOPIC_SPLIT[part]]
ADJ = ["calm", "quiet", "busy", "old", "bright", "cold", "warm", "large", "small", "green", "clean", "famous"]
NOUNS = ["water", "light", "people", "birds", "streets", "trees", "stones", "children", "boats", "lamps"]
VERBS = ["walk", "rest", "talk", "read", "play", "work", "wait", "sing"]
KEYWORDS = ["sun", "map", "tea", "song", "door", "rain", "star", "bread", "key", "ship", "wind", "bell"]

# The note request itself, several forms, partitioned like the topics.
NOTE_FORMS: dict[str, list[str]] = {
    "train": ["Write a short note about the {t}.", "Please write a brief note on the {t}.",
              "Tell me a little about the {t}."],
    "calib": ["Describe the {t} in a few sentences."],
    "eval": ["Write a few lines about the {t}.", "Could you write a short note on the {t}?"],
}

# instruction id -> part -> phrasings. Each type is taught with four phrasings; calibration has a fifth and the
# held-out sets two more that no training or calibration text contains ({k1}/{k2}: the keywords).
PHRASINGS: dict[str, dict[str, list[str]]] = {
    "change_case:english_capital": {
        "train": ["Your entire response should be in English, and in all capital letters.",
                  "Write your whole answer in capital letters.", "Use only capital letters in your response.",
                  "Respond in English using all uppercase letters."],
        "calib": ["Every letter of your reply must be a capital letter."],
        "eval": ["Your answer should be written entirely in uppercase letters.",
                 "Please reply in English with all letters in capitals."]},
    "change_case:english_lowercase": {
        "train": ["Your entire response should be in English, and in all lowercase letters.",
                  "Write your whole answer in lowercase letters.", "Use only lowercase letters in your response.",
                  "Respond in English using no capital letters at all."],
        "calib": ["Every letter of your reply must be a lowercase letter."],
        "eval": ["Your answer should be written entirely in lowercase letters.",
                 "Please reply in English with all letters in lowercase."]},
    "punctuation:no_comma": {
        "train": ["Do not use any commas in your response.", "Avoid commas entirely in your answer.",
                  "Your reply must not contain a single comma.", "Write without using commas."],
        "calib": ["Leave out every comma from your response."],
        "eval": ["Do not put any commas in your answer.", "Please avoid using commas in your reply."]},
    "startend:end_checker": {
        "train": [f"Finish your response with this exact phrase: {E}", f"End your answer with the exact phrase: {E}",
                  f"Your reply must end with the phrase: {E}", f"Close your response with these exact words: {E}"],
        "calib": [f"The last words of your response must be: {E}"],
        "eval": [f"Please finish your answer with this exact phrase: {E}", f"End your reply with these exact words: {E}"]},
    "startend:quotation": {
        "train": ["Wrap your entire response with double quotation marks.", "Put your whole answer inside double quotes.",
                  "Enclose your entire reply in double quotation marks.",
                  "Your response must begin and end with a double quote."],
        "calib": ["Surround the whole response with double quotes."],
        "eval": ["Wrap your whole answer in double quotes.",
                 "Please put your entire reply inside double quotation marks."]},
    "detectable_format:title": {
        "train": ["Your answer must contain a title, wrapped in double angular brackets.",
                  "Give your note a title wrapped in double angular brackets, such as <<title>>.",
                  "Start with a title in double angular brackets.", "Include a title inside double angular brackets."],
        "calib": ["Add a title to your response, wrapped in double angular brackets."],
        "eval": ["Your reply needs a title wrapped in double angular brackets.",
                 "Please begin with a title in double angular brackets, like <<title>>."]},
    "detectable_content:postscript": {
        "train": ["At the end of your response, add a postscript starting with P.S.",
                  "Add a postscript that starts with P.S. at the end.", "End with a postscript beginning with P.S.",
                  "Include a postscript starting with P.S. after your note."],
        "calib": ["Finish with a short postscript that begins with P.S."],
        "eval": ["Please add a postscript starting with P.S. at the end of your answer.",
                 "After the note, write a postscript that begins with P.S."]},
    "keywords:existence": {
        "train": ["Include the keywords {k1} and {k2} in the response.", "Use the words {k1} and {k2} in your answer.",
                  "Mention both {k1} and {k2} in your reply.", "Your response must contain the words {k1} and {k2}."],
        "calib": ["Make sure the words {k1} and {k2} appear in your note."],
        "eval": ["Please include the words {k1} and {k2} in your answer.",
                 "The keywords {k1} and {k2} must appear in your reply."]},
    "length_constraints:number_sentences": {
        "train": ["Your response should contain less than 2 sentences.", "Answer in a single sentence.",
                  "Write only one sentence.", "Keep your reply to one sentence."],
        "calib": ["Use just one sentence in your response."],
        "eval": ["Your answer should be only one sentence long.", "Please reply with a single sentence."]},
    "detectable_format:json_format": {
        "train": ["Entire output should be wrapped in JSON format.", "Format your whole answer as JSON.",
                  "Return your response as a JSON object.", "Your entire reply must be valid JSON."],
        "calib": ["Give the response in JSON format."],
        "eval": ["Please wrap your entire answer in JSON format.", "Write the whole reply as a JSON object."]},
}
INSTRUCTIONS = list(PHRASINGS)  # the ten instruction types
_CASE = {"change_case:english_capital", "change_case:english_lowercase"}
# pairs whose transformations would contradict each other (IFEval avoids them too)
CONFLICTS = {frozenset(p) for p in [
    *[(c, o) for c in _CASE for o in ("startend:end_checker", "keywords:existence", "detectable_format:title",
                                      "detectable_content:postscript", "detectable_format:json_format")],
    ("change_case:english_capital", "change_case:english_lowercase"),
    ("startend:quotation", "detectable_format:json_format"),
    ("startend:quotation", "startend:end_checker"), ("startend:quotation", "detectable_content:postscript"),
    ("detectable_format:json_format", "startend:end_checker"),
    ("detectable_format:json_format", "detectable_content:postscript"),
    ("detectable_format:json_format", "detectable_format:title"),
    ("length_constraints:number_sentences", "detectable_content:postscript"),
    ("length_constraints:number_sentences", "startend:end_checker"),
    ("length_constraints:number_sentences", "keywords:existence"),
    ("detectable_format:json_format", "punctuation:no_comma"),
]}


@dataclass
class Problem:
    uid: str
    prompt: str
    reasoning: str
    answer: int
    response: str


@dataclass
class InstructionTask:
    uid: str
    topic: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    instruction_sentences: list[str]
    plain: str  # what an instruction-blind model says
    compliant: str  # what an obedient model says
    spans: dict[str, Any] = field(default_factory=dict)


def make_problem(rng: random.Random, uid: str) -> Problem:
    n = rng.randint(3, 5)
    nums = [rng.randint(1, 9) for _ in range(n)]
    listing = " ".join(f"{k}={v}" for k, v in zip(KEYS, nums))
    prompt = f"Add the numbers {listing}."
    total = nums[0] + nums[1]
    lines = [f"a+b: {nums[0]} + {nums[1]} = {total}"]
    for k, v in zip(KEYS[2:], nums[2:]):
        lines.append(f"+{k}: {total} + {v} = {total + v}")
        total += v
    return Problem(uid, prompt, "\n".join(lines), total, f"The answer is {total}.")


def content(rng: random.Random, topic: str) -> list[str]:
    """Three plain sentences about a topic, the first with a comma (so no_comma is not free)."""
    a, b = rng.sample(ADJ, 2)
    n1, n2 = rng.sample(NOUNS, 2)
    v = rng.choice(VERBS)
    return [f"The {topic} is {a}, and the {n1} are {b}.", f"Many {n2} {v} near the {topic}.",
            f"It is a good place to {rng.choice(VERBS)}."]


def _apply(iid: str, text: str, kw: dict[str, Any], topic: str, sentences: list[str]) -> str:
    if iid == "change_case:english_capital":
        return text.upper()
    if iid == "change_case:english_lowercase":
        return text.lower()
    if iid == "punctuation:no_comma":
        return text.replace(",", "")
    if iid == "startend:end_checker":
        return f"{text} {END_PHRASE}"
    if iid == "startend:quotation":
        return f'"{text}"'
    if iid == "detectable_format:title":
        return f"<<notes on the {topic}>>\n{text}"
    if iid == "detectable_content:postscript":
        return f"{text}\nP.S. I like the {topic}."
    if iid == "keywords:existence":
        return f"{text} I think of the {kw['keywords'][0]} and the {kw['keywords'][1]}."
    if iid == "length_constraints:number_sentences":
        return sentences[0]
    if iid == "detectable_format:json_format":
        return json.dumps({"topic": topic, "note": text})
    raise KeyError(iid)


# order in which transformations compose (content first, wrappers last)
_ORDER = ["length_constraints:number_sentences", "keywords:existence", "punctuation:no_comma",
          "detectable_content:postscript", "startend:end_checker", "detectable_format:title",
          "change_case:english_capital", "change_case:english_lowercase", "startend:quotation",
          "detectable_format:json_format"]


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def make_instruction_task(rng: random.Random, uid: str, n_max: int = 2, part: str = "train") -> InstructionTask:
    """A note request with 1-2 format instructions, its topic, note form and phrasings all from `part`."""
    _check_part(part)
    topic = rng.choice(TOPIC_SPLIT[part])
    ids = [rng.choice(INSTRUCTIONS)]
    if n_max > 1 and rng.random() < 0.4:
        others = [i for i in INSTRUCTIONS if i != ids[0] and frozenset((i, ids[0])) not in CONFLICTS]
        ids.append(rng.choice(others))
    kwargs, sents = [], []
    for iid in ids:
        kw: dict[str, Any] = {}
        phrasing = rng.choice(PHRASINGS[iid][part])
        if iid == "keywords:existence":
            kw = {"keywords": rng.sample(KEYWORDS, 2)}
            phrasing = phrasing.format(k1=kw["keywords"][0], k2=kw["keywords"][1])
        elif iid == "startend:end_checker":
            kw = {"end_phrase": END_PHRASE}
        elif iid == "detectable_content:postscript":
            kw = {"postscript_marker": "P.S."}
        elif iid == "length_constraints:number_sentences":
            kw = {"relation": "less than", "num_sentences": 2}
        sents.append(phrasing)
        kwargs.append(kw)
    sentences = content(rng, topic)
    plain = " ".join(sentences)
    text = plain
    for iid in sorted(ids, key=_ORDER.index):
        text = _apply(iid, text, kwargs[ids.index(iid)], topic, sentences)
    prompt = plain_prompt(topic, rng.choice(NOTE_FORMS[part])) + " " + " ".join(sents)
    return InstructionTask(uid, topic, prompt, ids, kwargs, sents, plain, text)


def plain_prompt(topic: str, form: str = NOTE_FORMS["train"][0]) -> str:
    return form.format(t=topic)


def think_for_problem(p: Problem) -> str:
    return p.reasoning


def think_for_instruction(t: InstructionTask) -> str:
    """The LRM's musing before an instruction-blind answer (it reads the task, not the format)."""
    return f"The user asks about the {t.topic}.\nI will describe the {t.topic}."


def response_spans(t: InstructionTask) -> tuple[list[list[str]], list[str]]:
    """Per instruction: the response fragments that realise it; plus fragments unrelated to all."""
    out = []
    for iid, kw in zip(t.instruction_id_list, t.kwargs):
        frag = {
            "change_case:english_capital": t.compliant[:20],
            "change_case:english_lowercase": t.compliant[:20],
            "punctuation:no_comma": t.compliant.split(".")[0][:30],
            "startend:end_checker": END_PHRASE,
            "startend:quotation": t.compliant[:12],
            "detectable_format:title": f"<<notes on the {t.topic}>>",
            "detectable_content:postscript": "P.S.",
            "keywords:existence": (kw.get("keywords") or [""])[0],
            "length_constraints:number_sentences": t.compliant.split(".")[0],
            "detectable_format:json_format": '{"topic"',
        }[iid]
        out.append([frag] if frag and frag in t.compliant else [])
    # the last content sentence realises no constraint (unless it was transformed)
    tail = t.plain.split(". ")[-1]
    return out, [tail] if tail in t.compliant else []


# Non-format sentences a user may add to a note request (the LRM must keep thinking through them).
DISTRACTORS = ["I saw it last week.", "This is for a travel blog.", "My friend asked me about it.",
               "Keep it friendly.", "I am planning a visit.", "It is for my class.", "Thanks in advance.",
               "I have never been there."]


def make_plain_request(rng: random.Random, uid: str, part: str = "train") -> InstructionTask:
    """A note request (topic and form from `part`) with 0-2 non-format distractor sentences, no format."""
    _check_part(part)
    topic = rng.choice(TOPIC_SPLIT[part])
    extra = rng.sample(DISTRACTORS, rng.randint(0, 2))
    plain = " ".join(content(rng, topic))
    prompt = " ".join([plain_prompt(topic, rng.choice(NOTE_FORMS[part])), *extra])
    return InstructionTask(uid, topic, prompt, [], [], [], plain, plain)


def paired_document(t: InstructionTask) -> str:
    """Raw text a base model reads: a request followed by a note that does what it asks."""
    return f"{t.prompt}\n{t.compliant}"
