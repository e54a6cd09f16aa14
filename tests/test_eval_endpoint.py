"""The endpoint engine against a real OpenAI-compatible server (`transformers serve`, CPU, the toy LRM)
started by the engine on 127.0.0.1 and torn down by process group."""

import json
import os
import sys
from pathlib import Path

import pytest

from rainmerge.eval.engines import EngineConfig, Request, SamplingParams, build_engine
from rainmerge.eval.engines.endpoint import EndpointError
from rainmerge.eval.engines.hf import load

pytestmark = pytest.mark.slow

TOY = Path(__file__).resolve().parents[1] / "assets" / "toy"
LRM = str(TOY / "reasoning")
SERVE = [str(Path(sys.executable).parent / "transformers"), "serve", "{model}", "--host", "{host}", "--port", "{port}",
         "--device", "cpu", "--log-level", "warning"]


def _server_available():
    from transformers.utils.import_utils import is_serve_available

    return Path(SERVE[0]).is_file() and is_serve_available()


@pytest.mark.skipif(not _server_available(), reason="transformers[serving] not installed")
def test_endpoint_matches_inprocess_greedy_and_reports_length():
    model, tok = load(LRM, "cpu")
    rows = [json.loads(l) for l in (TOY / "data" / "eval_problems.jsonl").read_text().splitlines()[:4]]
    render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,  # noqa: E731
                                               add_generation_prompt=True)
    reqs = [Request(r["key"], render(r["prompt"]), 0, SamplingParams(120)) for r in rows]
    reqs += [Request(r["key"], render(r["prompt"]), 1, SamplingParams(6)) for r in rows[:2]]
    local = {c.key: c for c in build_engine(EngineConfig(max_concurrency=8), LRM, model=model,
                                            tokenizer=tok).generate(reqs)}
    eng = build_engine(EngineConfig(kind="endpoint", command=SERVE, max_concurrency=4, startup_timeout_s=120,
                                    max_retries=1), LRM)
    pgid = eng.server.proc.pid
    try:
        got = {c.key: c for c in eng.generate(reqs)}
        # a server-side rejection (unknown field) is not transient: one clear error, no retries
        bad = build_engine(EngineConfig(kind="endpoint", url=eng.url, extra_body={"bogus_field": 1}), LRM)
        with pytest.raises(EndpointError, match="HTTP 422"):
            list(bad.generate(reqs[:1]))
    finally:
        eng.close()
    assert set(got) == set(local)
    for k, c in got.items():
        ref = local[k]
        assert (c.prompt_tokens, c.output_tokens, c.finish_reason) == (ref.prompt_tokens, ref.output_tokens,
                                                                       ref.finish_reason)
        # `transformers serve` decodes with skip_special_tokens=True, so the toy's special think tags vanish
        plain = tok.decode(tok(ref.text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        assert c.text == plain
    assert {got[(r["key"], 1)].finish_reason for r in rows[:2]} == {"length"}
    assert "stop" in {c.finish_reason for c in got.values()}
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.killpg(pgid, 0)


def test_server_that_dies_fails_fast_with_its_log():
    cfg = EngineConfig(kind="endpoint", startup_timeout_s=30,
                       command=[sys.executable, "-c", "import sys; print('no model at', sys.argv[1]); sys.exit(3)",
                                "{model}"])
    with pytest.raises(EndpointError, match=r"exited with code 3(.|\n)*no model at"):
        build_engine(cfg, "/models/absent")
