"""An OpenAI-compatible `/v1/completions` client (vLLM, SGLang, `transformers serve`): the rendered prompt
goes as text, the server's finish reason and usage counts come back per request. Given a `url` it uses
that server; given a `command` it starts one with the evaluated model folder, waits (bounded) for it to
answer, and tears it down by process group."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import requests as http

from .engine_config import EngineConfig
from .types import Completion, Request

log = logging.getLogger(__name__)

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started from a command template, in its own process group, logs to a file."""

    def __init__(self, command: list[str], model_dir: str, served_name: str, timeout_s: float,
                 tensor_parallel_size: int = 1):
        self.host, self.port = "127.0.0.1", free_port()
        args = [a.format(model=model_dir, host=self.host, port=self.port, served_name=served_name,
                         tensor_parallel_size=tensor_parallel_size) for a in command]
        self.log_path = Path(tempfile.mkstemp(prefix="rainmerge-server-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        log.info("starting the evaluation server: %s (log %s)", " ".join(args), self.log_path)
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://{self.host}:{self.port}"
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _tail(self, n: int = 2000) -> str:
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EndpointError(f"the server exited with code {self.proc.returncode} before it was ready; "
                                    f"its log ends:\n{self._tail()}")
            try:
                if http.get(self.url + "/v1/models", timeout=5).status_code == 200:
                    return
            except http.RequestException:
                pass
            time.sleep(0.5)
        raise EndpointError(f"the server did not answer {self.url}/v1/models within {timeout_s:.0f} s; "
                            f"its log ends:\n{self._tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        self._log.close()


def check_tensor_parallel(size: int, visible: int | None = None) -> None:
    """A server asked to shard over more GPUs than this pod sees fails minutes into its start: say so first."""
    if size <= 1:
        return
    if visible is None:
        import torch

        visible = torch.cuda.device_count()
    if size > visible:
        raise EndpointError(f"tensor_parallel_size {size} but {visible} GPU(s) are visible: request {size} GPUs for "
                            "the evaluation pods (rainmerge plan --k8s) or lower tensor_parallel_size")


class EndpointEngine:
    name = "endpoint"

    def __init__(self, cfg: EngineConfig, model_dir: str):
        self.cfg = cfg
        self.model = cfg.served_model_name or model_dir
        if cfg.command:
            check_tensor_parallel(cfg.tensor_parallel_size)
        self.server = (ServerProcess(cfg.command, model_dir, self.model, cfg.startup_timeout_s, cfg.tensor_parallel_size)
                       if cfg.command else None)
        self.url = (self.server.url if self.server else cfg.url).rstrip("/")
        self._local = threading.local()
        token = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not token:
            raise EndpointError(f"engine.api_key_env names {cfg.api_key_env}, which is not set")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _session(self) -> http.Session:
        if not hasattr(self._local, "s"):
            self._local.s = http.Session()
        return self._local.s

    def payload(self, r: Request) -> dict[str, Any]:
        p = r.params
        body: dict[str, Any] = {"model": self.model, "prompt": r.prompt, "max_tokens": p.max_new_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, **self.cfg.extra_body}
        if p.seed is not None:
            body["seed"] = p.seed
        return body

    def _post(self, r: Request) -> dict[str, Any]:
        delay = 1.0
        for attempt in range(self.cfg.max_retries + 1):
            last = attempt == self.cfg.max_retries
            try:
                resp = self._session().post(self.url + "/v1/completions", json=self.payload(r), headers=self._headers,
                                            timeout=self.cfg.request_timeout_s)
            except (http.ConnectionError, http.Timeout) as e:
                if last:
                    raise EndpointError(f"{r.id}#{r.sample}: {type(e).__name__} after {attempt + 1} tries: {e}") from e
            else:
                if resp.status_code == 200:
                    return resp.json()
                if resp.status_code not in TRANSIENT_STATUS or last:
                    raise EndpointError(f"{r.id}#{r.sample}: HTTP {resp.status_code} from {self.url}: "
                                        f"{resp.text[:500]}")
            log.warning("%s#%d: transient failure, retry %d/%d in %.0f s", r.id, r.sample, attempt + 1,
                        self.cfg.max_retries, delay)
            time.sleep(delay * (1 + random.random() / 4))  # jitter: retries of many requests spread out
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _one(self, r: Request) -> Completion:
        data = self._post(r)
        choice = data["choices"][0]
        reason = choice.get("finish_reason") or "stop"
        if reason not in ("stop", "length"):
            raise EndpointError(f"{r.id}#{r.sample}: the server ended it with finish_reason {reason!r}")
        usage = data.get("usage") or {}
        if "completion_tokens" not in usage or "prompt_tokens" not in usage:
            raise EndpointError(f"{r.id}#{r.sample}: the server sent no usage token counts")
        return Completion(r.id, r.sample, choice["text"], int(usage["prompt_tokens"]),
                          int(usage["completion_tokens"]), reason)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        """At most `max_concurrency` requests in flight; each completion is yielded as it returns."""
        todo = iter(requests)
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="endpoint") as pool:
            running: set[Future] = set()
            try:
                while True:
                    for r in todo:
                        running.add(pool.submit(self._one, r))
                        if len(running) >= self.cfg.max_concurrency:
                            break
                    if not running:
                        return
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            finally:
                for f in running:
                    f.cancel()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
