"""Build the toy trio: tokenizer, base (pretrained), LRM (thinks), ITM (obeys formats), calibration sets in the
reference schemas, and held-out evaluation sets. Deterministic on CPU for a given spec.

Recipes: ToySpec() = v1, the committed trio (LRM answers format requests with the plain note, ITM without
think); ToySpec.v2() = the issue-15 recipe (paired "request + obeying note" documents in pre-training, LRM that
thinks through distractor notes and obeys formats on a 10% share, ITM answering after an empty think block,
note traces in the reasoning calibration). Results of both: docs/toy-v2.md."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.lazy import sha256_file
from ..io.writer import AtomicDir
from ..synthetic import R1_TEMPLATE, SPECIALS
from . import tasks as T
from .train import Example, pack, train

ITM_TEMPLATE = R1_TEMPLATE.replace("<|Assistant|><think>\n{% endif %}", "<|Assistant|>{% endif %}")


@dataclass
class ToySpec:
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    vocab: int = 600
    seed: int = 0  # training seed: initialisation and data order (the data split uses data_seed)
    data_seed: int = 0  # prompts of every set; fixed so that seeds share their held-out sets
    # defaults: recipe v1, the committed trio; ToySpec.v2() is the issue-15 recipe (docs/toy-v2.md)
    base_tokens: int = 1_700_000
    lrm_tokens: int = 1_000_000
    itm_tokens: int = 800_000
    finetune_lr: float = 1e-3
    seq_len: int = 128
    batch: int = 32
    n_train_problems: int = 6000
    n_train_instructions: int = 6000
    n_base_paired_format: int = 0  # base corpus: "<request with formats>\n<obeying note>"
    n_base_paired_plain: int = 0  # base corpus: "<plain request>\n<plain note>"
    n_lrm_plain_format: int = 3000  # LRM: format requests answered with think + the plain note (v1)
    n_lrm_notes: int = 0  # LRM: plain/distractor note requests, think + plain note
    lrm_if_share: float = 0.0  # LRM: think-mode format-obeying examples, share of problems + notes
    itm_empty_think: bool = False  # ITM: R1 template, answers after an empty think block
    n_calib_notes: int = 0  # reasoning calibration: LRM-style traces on note requests (besides problems)
    # reasoning calibration: the LRM's think + plain-note traces on the instruction-calibration prompts, so
    # Stage 1 protects the think format on format requests too (v1: RAIN well-formed 81% -> 100%, docs/toy-v2.md)
    calib_instruction_traces: bool = True
    n_calib_reasoning: int = 64
    n_calib_instruction: int = 64
    n_eval_problems: int = 200
    n_eval_instructions: int = 200
    n_eval_reasoning_kl: int = 50

    @classmethod
    def v2(cls, **kw: Any) -> "ToySpec":
        """Issue-15 recipe (the toy study's R2 + R4-10% + R6, docs/toy-v2.md): paired format documents in
        pre-training, an LRM that thinks through distractor notes and obeys formats on a 10% share, an ITM that
        answers after an empty think block, note traces in the reasoning calibration."""
        v2 = dict(base_tokens=2_000_000, lrm_tokens=400_000, itm_tokens=300_000, n_base_paired_format=6000,
                  n_base_paired_plain=2000, n_lrm_plain_format=0, n_lrm_notes=3000, lrm_if_share=0.10,
                  itm_empty_think=True, n_calib_notes=32, calib_instruction_traces=False)
        return cls(**{**v2, **kw})

    @classmethod
    def long_lrm(cls, **kw: Any) -> "ToySpec":
        """v2 with the LRM fine-tuned 3x longer (1.2M tokens): under v2 the LRM learns to look up the later keys
        of a sum on some seeds only (held-out reasoning 100, 100, 34, 39.5 % on seeds 0-3; docs/toy-v3.md v3.2)."""
        return cls.v2(**{"lrm_if_share": 0.02, "lrm_tokens": 1_200_000, **kw})

    @classmethod
    def gentle(cls, **kw: Any) -> "ToySpec":
        """v2 with a 2% think-mode share, a base pre-trained 1.5x longer (3M tokens) and both fine-tunes at half
        the learning rate (5e-4): smaller task vectors on a stronger base. Tried for issue 27 and not shipped: the
        best of three variants on seed 0's dev set, but its LRM is under-trained on 2 of 4 seeds (docs/toy-v3.md)."""
        return cls.v2(**{"lrm_if_share": 0.02, "base_tokens": 3_000_000, "finetune_lr": 5e-4, **kw})


def _tokenizer(corpus: list[str], spec: ToySpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", unk_token="<|pad|>",  # no extra <|endoftext|>
                                   additional_special_tokens=SPECIALS[2:6],
                                   chat_template=R1_TEMPLATE)


def _prefix(tok, prompt: str, think: bool) -> str:
    tok.chat_template = R1_TEMPLATE if think else ITM_TEMPLATE
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def _chat_example(tok, prompt: str, completion: str, think: bool) -> Example:
    pre = tok(_prefix(tok, prompt, think), add_special_tokens=False)["input_ids"]
    body = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return pre + body, [0] * len(pre) + [1] * len(body)


def lrm_completion(reasoning: str, answer: str) -> str:
    return f"{reasoning}\n</think>\n\n{answer}"


class _Split:
    """Evaluation and calibration prompts are unique and reserved; training never uses a reserved
    prompt (it may repeat its own, the instruction-prompt space is small)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.reserved: set[str] = set()

    def _draw(self, make, n: int, tag: str, reserve: bool, part: str) -> list:
        out = []
        while len(out) < n:
            item = make(self.rng, f"{tag}{len(out)}", part=part)
            if item.prompt in self.reserved:
                continue
            if reserve:
                self.reserved.add(item.prompt)
            out.append(item)
        return out

    def problems(self, n: int, tag: str, reserve: bool = True) -> list[T.Problem]:
        return self._draw(lambda rng, uid, part: T.make_problem(rng, uid), n, tag, reserve, "")

    def instructions(self, n: int, tag: str, part: str, reserve: bool = True) -> list[T.InstructionTask]:
        return self._draw(T.make_instruction_task, n, tag, reserve, part)

    def notes(self, n: int, tag: str, part: str, reserve: bool = True) -> list[T.InstructionTask]:
        return self._draw(T.make_plain_request, n, tag, reserve, part)


def _base_corpus(rng: random.Random, problems: list[T.Problem], instr: list[T.InstructionTask],
                 paired: list[T.InstructionTask]) -> list[str]:
    """What a base model reads: plain notes, notes in many formats, requests followed by notes that do
    what they ask (format competence shared by both fine-tunes), sums worked out, facts."""
    docs = []
    for t in instr:
        docs.append(t.plain)
        docs.append(t.compliant if rng.random() < 0.5 else t.prompt)
    docs += [T.paired_document(t) for t in paired]
    for p in problems:
        docs.append(f"{p.prompt} {p.reasoning.replace(chr(10), ' ')} {p.response}")
    for a in range(46):
        for b in range(1, 10):
            docs.append(f"{a} + {b} = {a + b}")
    rng.shuffle(docs)
    return docs


def draw_sets(spec: ToySpec) -> dict[str, list]:
    """Every prompt set of a build, from spec.data_seed alone (no training). Instruction and note prompts come
    from their part of the generator (tasks.PARTS: phrasings, note forms and topics disjoint by construction);
    problems are reserved by prompt: held-out and calibration drawn first, training never repeats one."""
    split = _Split(spec.data_seed)
    out = {
        "eval_problems": split.problems(spec.n_eval_problems, "ep"),
        "eval_instructions": split.instructions(spec.n_eval_instructions, "ei", "eval"),
        "eval_reasoning_kl": split.problems(spec.n_eval_reasoning_kl, "ek"),
        "calib_problems": split.problems(spec.n_calib_reasoning, "cp"),
        "calib_instructions": split.instructions(spec.n_calib_instruction, "ci", "calib"),
    }
    out["train_problems"] = split.problems(spec.n_train_problems, "tp", reserve=False)
    out["train_instructions"] = split.instructions(spec.n_train_instructions, "ti", "train", reserve=False)
    out["calib_notes"] = split.notes(spec.n_calib_notes, "cn", "calib")
    out["train_notes"] = split.notes(spec.n_lrm_notes + spec.n_base_paired_plain, "tn", "train", reserve=False)
    out["train_format_docs"] = split.instructions(spec.n_base_paired_format, "tf", "train", reserve=False)
    return out


def _finetune_sets(tok: Any, spec: ToySpec, tr_p: list, tr_i: list, tr_n: list) -> tuple[list, list]:
    """The LRM's and the ITM's fine-tuning examples (tokenized chats)."""
    # LRM: thinks on every prompt (problems, note requests with distractors), and obeys formats in think
    # mode on a small share of its data -- partial instruction following, like a distilled reasoner.
    lrm_ex = [_chat_example(tok, p.prompt, lrm_completion(p.reasoning, p.response), True) for p in tr_p]
    lrm_ex += [_chat_example(tok, t.prompt, lrm_completion(T.think_for_instruction(t), t.plain), True)
               for t in tr_i[:spec.n_lrm_plain_format]]
    notes = tr_n[:spec.n_lrm_notes]
    lrm_ex += [_chat_example(tok, t.prompt, lrm_completion(T.think_for_instruction(t), t.plain), True) for t in notes]
    n_if = round(spec.lrm_if_share * (len(tr_p) + len(notes)))
    lrm_ex += [_chat_example(tok, t.prompt, lrm_completion(T.think_for_instruction(t), t.compliant), True)
               for t in tr_i[len(tr_i) - n_if:]]
    # ITM: obeys formats; on problems it guesses without working. With itm_empty_think it answers after an
    # empty think block in the LRM's template (a "non-thinking mode"), so both fine-tunes share a context.
    itm_think = spec.itm_empty_think

    def itm_body(answer: str) -> str:
        return f"\n</think>\n\n{answer}" if itm_think else answer

    itm_ex = [_chat_example(tok, t.prompt, itm_body(t.compliant), itm_think) for t in tr_i]
    itm_ex += [_chat_example(tok, p.prompt, itm_body(p.response), itm_think) for p in tr_p[: len(tr_p) // 3]]

    return lrm_ex, itm_ex


def build(out: str | Path, spec: ToySpec | None = None, progress: bool = True, overwrite: bool = False,
          log=print) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    spec = spec or ToySpec()
    t0 = time.time()
    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(True)
    sets = draw_sets(spec)
    ev_p, ev_i, ev_kl, cal_p, cal_i, cal_n = (sets[k] for k in ("eval_problems", "eval_instructions",
                                                                 "eval_reasoning_kl", "calib_problems",
                                                                 "calib_instructions", "calib_notes"))
    tr_p, tr_i, tr_n, tr_f = (sets[k] for k in ("train_problems", "train_instructions", "train_notes",
                                                 "train_format_docs"))
    rng = random.Random(spec.data_seed + 1)
    corpus = _base_corpus(rng, tr_p, tr_i, tr_f + tr_n[spec.n_lrm_notes:])
    tok = _tokenizer(corpus + [_prefix_text(p.prompt) for p in tr_p[:50]], spec)

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                      num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.kv_heads, max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(spec.seed)
    base = AutoModelForCausalLM.from_config(cfg).float()
    docs = [tok(d + "\n", add_special_tokens=False)["input_ids"] for d in corpus]
    losses = {"base": train(base, pack(docs, spec.seq_len), tokens=spec.base_tokens, batch=spec.batch, lr=2e-3,
                            seed=spec.seed, pad_id=tok.pad_token_id, desc="toy: base", progress=progress, log=log)}
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}

    lrm_ex, itm_ex = _finetune_sets(tok, spec, tr_p, tr_i, tr_n)
    itm_think = spec.itm_empty_think

    models = {"base": base}
    for role, exs, n_tok in (("reasoning", lrm_ex, spec.lrm_tokens), ("instruct", itm_ex, spec.itm_tokens)):
        m = AutoModelForCausalLM.from_config(cfg).float()
        m.load_state_dict(base_sd)
        losses[role] = train(m, exs, tokens=n_tok, batch=spec.batch, lr=spec.finetune_lr, seed=spec.seed + len(role),
                             pad_id=tok.pad_token_id, desc=f"toy: {role}", progress=progress, log=log)
        models[role] = m

    with AtomicDir(out, overwrite, markers=("manifest.json",)) as tmp:
        for role, m in models.items():
            m.generation_config.eos_token_id = tok.eos_token_id
            m.generation_config.pad_token_id = tok.pad_token_id
            m.save_pretrained(tmp / role)
            tok.chat_template = ITM_TEMPLATE if role == "instruct" and not itm_think else R1_TEMPLATE
            tok.save_pretrained(tmp / role)
        data = tmp / "data"
        data.mkdir()
        _write_sets(data, cal_p, cal_i, ev_p, ev_i, ev_kl,
                    [*cal_n, *(cal_i if spec.calib_instruction_traces else [])])
        manifest: dict[str, Any] = {
            "spec": asdict(spec), "build_seconds": round(time.time() - t0, 1), "final_loss": losses,
            "params_per_model": sum(p.numel() for p in base.parameters()),
            "files": {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log(f"toy trio built in {time.time() - t0:.0f}s -> {out}")
    return Path(out)


def _prefix_text(prompt: str) -> str:
    return f"<|begin|><|User|>{prompt}<|Assistant|><think>\n"


def _dump_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def jsonl_prompts(folder: Path, pattern: str = "eval_*.jsonl") -> frozenset[str]:
    """The prompts of the JSONL sets in `folder` matching `pattern` (what _dump_jsonl wrote)."""
    return frozenset(json.loads(line)["prompt"] for f in sorted(Path(folder).glob(pattern))
                     for line in f.read_text().splitlines())


def _problem_rows(problems: list[T.Problem]) -> list[dict[str, Any]]:
    """Sums in the evaluation's reasoning schema (eval_problems*.jsonl)."""
    return [{"key": p.uid, "prompt": p.prompt, "answer": p.answer} for p in problems]


def _instruction_rows(tasks: list[T.InstructionTask]) -> list[dict[str, Any]]:
    """Format requests in the evaluation's IFEval schema (eval_instructions*.jsonl)."""
    return [{"key": t.uid, "prompt": t.prompt, "instruction_id_list": t.instruction_id_list, "kwargs": t.kwargs}
            for t in tasks]


def _write_sets(data: Path, cal_p, cal_i, ev_p, ev_i, ev_kl, cal_n=()) -> None:
    (data / "reasoning_calibration.json").write_text(json.dumps(
        [{"prompt": p.prompt, "reasoning": p.reasoning, "response": p.response, "sample_id": p.uid,
          "source": "toy/keyed-sum"} for p in cal_p]
        + [{"prompt": t.prompt, "reasoning": T.think_for_instruction(t), "response": t.plain, "sample_id": t.uid,
            "source": "toy/note-request" if not t.instruction_id_list else "toy/format-request"} for t in cal_n],
        indent=1))
    rows = []
    for t in cal_i:
        per_inst, unrelated = T.response_spans(t)
        rows.append({
            "id": t.uid, "prompt": t.prompt, "reason": T.think_for_instruction(t), "response": t.compliant,
            "instruction_id_list": t.instruction_id_list, "instruction_list": t.instruction_sentences,
            "related_prompt_list": [
                {"instruction_id": iid, "normalized": {"type": iid, "args": kw}, "prompt_spans": [sent],
                 "response_spans": spans, "negative_response_spans": [], "unrelated_response_spans": []}
                for iid, kw, sent, spans in zip(t.instruction_id_list, t.kwargs, t.instruction_sentences, per_inst)],
            "unrelated_response_spans": unrelated, "verdict": {iid: True for iid in t.instruction_id_list},
            "meta": {"source": "toy"},
        })
    _dump_jsonl(data / "instruction_calibration.jsonl", rows)
    _dump_jsonl(data / "eval_problems.jsonl", _problem_rows(ev_p))
    _dump_jsonl(data / "eval_instructions.jsonl", _instruction_rows(ev_i))
    (data / "eval_reasoning_heldout.json").write_text(json.dumps(
        [{"prompt": p.prompt, "reasoning": p.reasoning, "response": p.response, "sample_id": p.uid} for p in ev_kl],
        indent=1))


def _build_prompts(spec: ToySpec) -> set[str]:
    """Every prompt of every set of a build (draw_sets rebuilds them from spec.data_seed)."""
    return {x.prompt for items in draw_sets(spec).values() for x in items}


def _built_spec(toy_dir: str | Path) -> ToySpec:
    """The spec in a built trio's manifest. A knob this code no longer has is dropped when the build left it unset
    (None: it changed nothing, e.g. lrm_lr in the v3.2 builds); set, it is a ValueError (not reproducible here)."""
    spec = json.loads((Path(toy_dir) / "manifest.json").read_text())["spec"]
    known = set(ToySpec.__dataclass_fields__)
    retired = {k: v for k, v in spec.items() if k not in known}
    if any(v is not None for v in retired.values()):
        raise ValueError(f"{toy_dir}: built with knobs this code does not have: {retired}")
    return ToySpec(**{k: v for k, v in spec.items() if k in known})


def extra_held_out_instructions(spec: ToySpec, n: int, seed: int = 1) -> list[T.InstructionTask]:
    """More held-out instruction prompts for an already built trio: drawn from the same generator, never
    a prompt of any set of the build (draw_sets(spec) rebuilds them all from spec.data_seed), and only held-out
    phrasings, note forms and topics (tasks.PARTS "eval"), so the trio has seen neither the prompts nor
    their wording nor their subjects."""
    used = _build_prompts(spec)
    rng = random.Random(seed)
    return _draw_unused(lambda i: T.make_instruction_task(rng, f"ex{i}", part="eval"), n, used, "instruction")


def _draw_unused(make, n: int, used: set[str], what: str) -> list:
    """n items make(i) (i: how many are kept so far) whose prompts are not in `used`, which they join; a generator
    that runs out (200 n draws) is a ValueError saying how many it found."""
    out: list = []
    for _ in range(200 * n):
        item = make(len(out))
        if item.prompt not in used:
            used.add(item.prompt)
            out.append(item)
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} unused {what} prompts found; ask for fewer than {n}")


DEV_SIZES = (300, 100)  # the dev set's instruction prompts and problems (CLI defaults; extra problems avoid them)


def extra_held_out_problems(spec: ToySpec, n: int, seed: int = 1) -> list[T.Problem]:
    """More held-out sums for an already built trio (a tighter reasoning interval): never a prompt of any set of
    the build nor of its default dev set (dev_sets(spec, *DEV_SIZES))."""
    used = _build_prompts(spec) | {x.prompt for items in dev_sets(spec, *DEV_SIZES) for x in items}
    rng = random.Random(seed)
    return _draw_unused(lambda i: T.make_problem(rng, f"exp{i}"), n, used, "problem")


def dev_sets(spec: ToySpec, n_instructions: int, n_problems: int, seed: int = 2,
             avoid: frozenset[str] = frozenset()) -> tuple[list, list]:
    """A development set for choosing merge settings without touching the held-out sets: instruction prompts in
    the calibration part's phrasing, note form and topics (text the merge already reads, never training text),
    and problems; none is a prompt of any set of the build, nor one of `avoid`."""
    used = _build_prompts(spec) | avoid
    rng = random.Random(seed)
    return (_draw_unused(lambda i: T.make_instruction_task(rng, f"devi{i}", part="calib"), n_instructions, used,
                         "instruction"),
            _draw_unused(lambda i: T.make_problem(rng, f"devp{i}"), n_problems, used, "problem"))


def write_dev_set(toy_dir: str | Path, out: str | Path, n_instructions: int = DEV_SIZES[0],
                  n_problems: int = DEV_SIZES[1]) -> Path:
    """eval_instructions.jsonl and eval_problems.jsonl of dev_sets in `out` (a data folder the evaluation reads)."""
    # the extra held-out sums avoid only the default dev set's; a larger dev set avoids them in turn
    extra = jsonl_prompts(Path(toy_dir) / "data", "eval_*_extra.jsonl")
    instr, probs = dev_sets(_built_spec(toy_dir), n_instructions, n_problems, avoid=extra)
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    _dump_jsonl(dest / "eval_instructions.jsonl", _instruction_rows(instr))
    _dump_jsonl(dest / "eval_problems.jsonl", _problem_rows(probs))
    return dest


def write_extra_held_out(toy_dir: str | Path, n: int, seed: int = 1, problems: int = 0) -> Path:
    """eval_instructions_extra.jsonl (and, with problems > 0, eval_problems_extra.jsonl) beside the toy's other
    evaluation sets, for the spec in its manifest."""
    spec, data = _built_spec(toy_dir), Path(toy_dir) / "data"
    _dump_jsonl(data / "eval_instructions_extra.jsonl", _instruction_rows(extra_held_out_instructions(spec, n, seed)))
    if problems:
        _dump_jsonl(data / "eval_problems_extra.jsonl", _problem_rows(extra_held_out_problems(spec, problems, seed)))
    return data / "eval_instructions_extra.jsonl"
