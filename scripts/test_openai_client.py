#!/usr/bin/env python3
"""`cinfer serve` driven by the official `openai` Python package, as users' code drives it.

    python3 scripts/test_openai_client.py --cinfer build/cinfer [--model models/diffllama-tiny]

Starts the server on a free port with an API key, on the bundled model and on a copy of it with a
ChatML template (the bundled model has none), and checks through the client: completions and
chat, streamed and not (the streamed text joined equals the whole answer, greedy), usage in both,
stream_options.include_usage, logprobs, stop strings, models.list(), and that the client raises
its own exception types for a wrong key (401), a bad value (400) and an unknown model (404).
Then SIGTERM: the server exits 0.

ctest runs it (tests/CMakeLists.txt); status 77 means skipped: the `openai` package could not be
installed (no PyPI), never passed. The package comes from scripts/fixture_venv.py's venv.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ensure_dependencies  # noqa: E402  scripts/fixture_venv.py

ensure_dependencies(["openai"], "openai client", packages=("openai",))

import openai  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-" + os.urandom(6).hex()
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


class Server:
    """cinfer serve on a free port; its stderr collected, so a failure shows it."""

    def __init__(self, cinfer, model, *extra):
        self.proc = subprocess.Popen(
            [cinfer, "serve", "--model", str(model), "--port", "0", "--api-key", KEY,
             "--threads", "2", *extra],
            stderr=subprocess.PIPE, text=True)
        self.log = []
        ready = threading.Event()
        self.port = None

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                found = re.search(r"serving '.*' on http://[^:]+:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or self.port is None:
            self.proc.kill()
            raise SystemExit("FAIL: the server did not start:\n" + "".join(self.log))

    def client(self, key=KEY):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key,
                             max_retries=0, timeout=60)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        time.sleep(0.1)  # the reader thread takes the last lines
        log = "".join(self.log)
        check(code == 0, f"the server exits 0 on SIGTERM (got {code}):\n{log}")
        check("Sanitizer" not in log, f"no sanitizer report:\n{log}")


failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what.splitlines()[0], flush=True)
    if not condition:
        failures.append(what)


def completions(server, model):
    client = server.client()
    names = [m.id for m in client.models.list().data]
    check(names == [model], f"models.list() names the served model: {names}")

    whole = client.completions.create(model=model, prompt="And God said", max_tokens=24,
                                      temperature=0)
    text = whole.choices[0].text
    check(whole.object == "text_completion", f"object is text_completion: {whole.object}")
    check(len(text) > 0 and whole.choices[0].finish_reason in ("length", "stop"),
          f"an answer with a finish reason: {text!r} {whole.choices[0].finish_reason}")
    usage = whole.usage
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
          and usage.completion_tokens <= 24, f"usage adds up: {usage}")

    pieces, final_usage, reasons = [], None, []
    for chunk in client.completions.create(model=model, prompt="And God said", max_tokens=24,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            final_usage = chunk.usage
    check("".join(pieces) == text, f"streamed text joined = the whole answer: "
          f"{''.join(pieces)!r} vs {text!r}")
    check(reasons[-1] == whole.choices[0].finish_reason and all(r is None for r in reasons[:-1]),
          f"only the last chunk has a finish reason: {reasons}")
    check(final_usage is not None and final_usage.completion_tokens == usage.completion_tokens,
          f"include_usage gives the same usage last: {final_usage}")

    # a stop string from the middle of the greedy answer: the text ends just before it
    words = text.split(" ")
    stop = " " + words[len(words) // 2] if len(words) > 2 else None
    if stop and stop in text:
        cut = client.completions.create(model=model, prompt="And God said", max_tokens=24,
                                        temperature=0, stop=[stop])
        check(cut.choices[0].text == text[:text.index(stop)]
              and cut.choices[0].finish_reason == "stop",
              f"stop {stop!r} cuts the answer there: {cut.choices[0].text!r}")

    lp = client.completions.create(model=model, prompt="And God said", max_tokens=4,
                                   temperature=0, logprobs=3)
    logprobs = lp.choices[0].logprobs
    check(len(logprobs.tokens) == 4 and len(logprobs.top_logprobs) == 4
          and all(len(t) <= 3 for t in logprobs.top_logprobs)
          and all(v <= 0 for v in logprobs.token_logprobs),
          f"logprobs=3: four tokens, three alternatives each: {logprobs}")

    try:
        server.client(key="wrong").completions.create(model=model, prompt="x", max_tokens=1)
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"a wrong key: AuthenticationError 401 ({e.status_code})")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, temperature=5)
        check(False, "temperature 5 is refused")
    except openai.BadRequestError as e:
        check("temperature" in str(e), f"temperature 5: BadRequestError naming it ({e})")
    try:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"an unknown model: NotFoundError 404 ({e.status_code})")


def chat(server, model):
    client = server.client()
    messages = [{"role": "system", "content": "Answer in the style of the King James Bible."},
                {"role": "user", "content": "Who made the light?"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=20,
                                           temperature=0, logprobs=True, top_logprobs=2)
    message = whole.choices[0].message
    check(whole.object == "chat.completion" and message.role == "assistant"
          and len(message.content) > 0, f"a chat answer: {message.content!r}")
    content_logprobs = whole.choices[0].logprobs.content
    check(len(content_logprobs) == whole.usage.completion_tokens
          and all(len(t.top_logprobs) == 2 for t in content_logprobs),
          f"chat logprobs: one per token, two alternatives ({len(content_logprobs)} tokens)")

    pieces, roles, objects, final_usage = [], [], set(), None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=20,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        objects.add(chunk.object)
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            if delta.content:
                pieces.append(delta.content)
        if chunk.usage:
            final_usage = chunk.usage
    check(objects == {"chat.completion.chunk"}, f"every chunk is a chat.completion.chunk: {objects}")
    check(roles == ["assistant"], f"the role comes once, first: {roles}")
    check("".join(pieces) == message.content,
          f"streamed chat joined = the whole answer: {''.join(pieces)!r} vs {message.content!r}")
    check(final_usage is not None and final_usage.total_tokens == whole.usage.total_tokens,
          f"the stream's usage = the answer's: {final_usage}")

    seeded = [client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                             temperature=0.8, seed=7).choices[0].message.content
              for _ in range(2)]
    check(seeded[0] == seeded[1], f"the same seed, the same sample: {seeded}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cinfer", required=True, help="the cinfer binary")
    parser.add_argument("--model", default=str(REPO / "models" / "diffllama-tiny"))
    args = parser.parse_args()

    server = Server(args.cinfer, args.model)
    try:
        completions(server, Path(args.model).name)
    finally:
        server.stop()

    with tempfile.TemporaryDirectory() as folder:
        chat_model = Path(folder) / "tiny-chat"
        chat_model.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json",
                     "generation_config.json"):
            os.symlink(Path(args.model).resolve() / name, chat_model / name)
        import json
        config = json.loads((Path(args.model) / "tokenizer_config.json").read_text())
        config["chat_template"] = CHATML
        (chat_model / "tokenizer_config.json").write_text(json.dumps(config))
        server = Server(args.cinfer, chat_model)
        try:
            chat(server, "tiny-chat")
        finally:
            server.stop()

    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
