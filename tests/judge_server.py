"""A loopback HTTP server that speaks the OpenAI and Anthropic wire formats.

It plays a judge for the tests and the benchmark: chat completions with
logprobs, Anthropic messages, the OpenAI Batch API (file upload, batches,
file download) and Anthropic Message Batches. Faults are queued with
``inject`` and consumed one per matching request.

The judge is deliberately gullible: it finds the answer between the first
``<answer-ID>`` tag and the next ``</answer-ID>`` with the same id, and it
obeys any "score: N" it sees outside that region. So a prompt whose
delimiters an answer can forge lets that answer set its own score, and a
test can tell.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import math
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FILLER_TOKENS = [
    "Sure", "The", "I", "As", "This", "Answer", "Rating", "It", "My", "Here",
    "Based", "Yes", "No", "Okay", "Well", "So", "Hmm", "We", "One",
]
GENERATION_PATHS = ("/v1/chat/completions", "/v1/messages")
OPEN_TAG = re.compile(r"<answer-([A-Za-z0-9_-]+)>")
INJECTED_SCORE = re.compile(r"(?i)score\s*[:=]\s*(\d{1,3})")


def judge_reply(prompt: str) -> str:
    """Return the judge's reply to a rendered judge prompt (a number, CODE or REFUSAL).

    Inside the answer, markers set the honest verdict: [[alignment=N]],
    [[coherence=N]], [[trait=N]], [[score=N]], [[code]], [[refusal]]; with
    none, the verdict is 50.
    """
    opener = OPEN_TAG.search(prompt)
    if opener is None:
        inside, outside = "", prompt
    else:
        end = prompt.find(f"</answer-{opener.group(1)}>", opener.end())
        end = len(prompt) if end < 0 else end
        inside = prompt[opener.end():end]
        outside = prompt[:opener.start()] + prompt[end:]
    injected = INJECTED_SCORE.search(outside)
    if injected:
        return injected.group(1)
    lowered = outside.lower()
    metric = "alignment"
    if "coheren" in lowered:
        metric = "coherence"
    elif "trait" in lowered:
        metric = "trait"
    for pattern in (rf"\[\[{metric}=(\d+)\]\]", r"\[\[score=(\d+)\]\]"):
        found = re.search(pattern, inside)
        if found:
            return found.group(1)
    if "[[code]]" in inside:
        return "CODE"
    if "[[refusal]]" in inside:
        return "REFUSAL"
    return "50"


def first_token(reply: str) -> str:
    return "REF" if reply == "REFUSAL" else reply


def top_logprobs_for(reply: str) -> list[tuple[str, float]]:
    """A peaked distribution: the reply's first token at p=0.9, then 19 non-numeric fillers."""
    pairs = [(first_token(reply), math.log(0.9))]
    pairs += [(token, math.log(0.004)) for token in FILLER_TOKENS]
    return pairs


class JudgeServer:
    """The server state: queued faults, a request log, files and batches."""

    def __init__(self, latency: float = 0.0):
        self.latency = latency
        self.faults: list[dict] = []
        self.log: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.polls_until_done = 0
        self.reply = judge_reply
        self.logprobs_for = top_logprobs_for
        self.text_for = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> "JudgeServer":
        state = self

        class Handler(_Handler):
            server_state = state

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # Faults and counters

    def inject(self, kind: str, count: int = 1, path: str | None = None, **params) -> None:
        """Queue ``count`` faults of ``kind`` for the next matching requests.

        Kinds: 429 (with retry_after or retry_after_ms), any other HTTP status
        such as 529 or 500, slow (sleeps ``seconds``), malformed_json, non_json, logprobs_null,
        empty_logprobs, duplicate_tokens, refusal. ``path`` limits the fault
        to request paths containing it (default: the two generation paths).
        """
        with self._lock:
            for _ in range(count):
                self.faults.append({"kind": kind, "path": path, **params})

    def take_fault(self, path: str) -> dict | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                matches = (fault["path"] in path) if fault["path"] else path in GENERATION_PATHS
                if matches:
                    return self.faults.pop(index)
        return None

    def count(self, path: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1 for entry in self.log
                if (path is None or entry["path"] == path) and (method is None or entry["method"] == method)
            )

    def faults_served(self) -> Counter:
        with self._lock:
            return Counter(entry["fault"] for entry in self.log if entry["fault"])

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    # Replies

    def chat_completion(self, body: dict, fault: dict | None) -> dict:
        prompt = "\n".join(str(message.get("content", "")) for message in body.get("messages", []))
        reply = self.reply(prompt)
        kind = fault["kind"] if fault else None
        logprobs = None
        if body.get("logprobs"):
            pairs = self.logprobs_for(reply)
            if kind == "duplicate_tokens":
                pairs = [("5", math.log(0.4)), (" 5", math.log(0.4)), ("7", math.log(0.1))] + pairs[1:18]
            top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())} for token, logprob in pairs]
            top = top[: body.get("top_logprobs") or 0]
            content = [{"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": top[0]["bytes"],
                        "top_logprobs": top}] if top else []
            logprobs = {"content": content, "refusal": None}
            if kind == "logprobs_null":
                logprobs = None
            elif kind == "empty_logprobs":
                logprobs = {"content": [], "refusal": None}
        text = first_token(reply) if body.get("max_tokens") == 1 else reply
        message = {"role": "assistant", "content": text, "refusal": None}
        if kind == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        return {
            "id": self.next_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": 1,
                      "total_tokens": max(1, len(prompt) // 4) + 1},
        }

    def anthropic_message(self, body: dict, fault: dict | None) -> dict:
        prompt = "\n".join(str(message.get("content", "")) for message in body.get("messages", []))
        reply = self.reply(prompt)
        if self.text_for is not None:
            reply = self.text_for(reply)
        stop_reason = "refusal" if fault and fault["kind"] == "refusal" else "end_turn"
        return {
            "id": self.next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": reply}] if stop_reason != "refusal" else [],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": max(1, (len(prompt) + len(body.get("system", ""))) // 4), "output_tokens": 2},
        }

    # Batches

    def finish_openai_batch(self, batch: dict) -> None:
        lines = self.files[batch["input_file_id"]].decode().splitlines()
        output = []
        for line in lines:
            if not line.strip():
                continue
            request = json.loads(line)
            body = self.chat_completion(request["body"], None)
            output.append(json.dumps({
                "id": self.next_id("batch_req_"),
                "custom_id": request["custom_id"],
                "response": {"status_code": 200, "request_id": self.next_id("req_"), "body": body},
                "error": None,
            }))
        file_id = self.next_id("file-out-")
        self.files[file_id] = ("\n".join(output) + "\n").encode()
        batch.update(status="completed", output_file_id=file_id, completed_at=int(time.time()))
        batch["request_counts"] = {"total": len(output), "completed": len(output), "failed": 0}

    def finish_anthropic_batch(self, batch: dict) -> None:
        lines = []
        for item in batch["_requests"]:
            message = self.anthropic_message(item["params"], None)
            lines.append(json.dumps({"custom_id": item["custom_id"], "result": {"type": "succeeded", "message": message}}))
        batch["_results"] = ("\n".join(lines) + "\n").encode()
        batch.update(processing_status="ended", ended_at="2025-01-01T00:00:00Z",
                     results_url=f"{self.url}/v1/messages/batches/{batch['id']}/results")
        batch["request_counts"] = {"processing": 0, "succeeded": len(lines), "errored": 0, "canceled": 0, "expired": 0}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 resets connections when many clients connect at once.
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; Nagle plus delayed ACK would add about 40 ms.
    disable_nagle_algorithm = True
    server_state: JudgeServer

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        return

    def _send(self, status: int, payload: bytes, content_type: str = "application/json", headers: dict | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            request_id = self.server_state.next_id("req_")
            self.send_header("x-request-id", request_id)
            self.send_header("request-id", request_id)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, status: int, value, headers: dict | None = None):
        self._send(status, json.dumps(value).encode(), headers=headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str) -> None:
        state = self.server_state
        path = self.path.split("?")[0]
        raw = self._body()
        fault = state.take_fault(path)
        with state._lock:
            state.log.append({"path": path, "method": method, "fault": fault["kind"] if fault else None,
                              "time": time.monotonic()})
        if state.latency:
            time.sleep(state.latency)
        if fault and self._apply_fault(fault):
            return
        try:
            self._route(method, path, raw, fault)
        except (KeyError, ValueError) as error:
            self._json(400, {"error": {"message": f"bad request: {error}", "type": "invalid_request_error"}})

    def _apply_fault(self, fault: dict) -> bool:
        """Send the fault's reply; return False for faults that change a normal reply instead."""
        kind = fault["kind"]
        if kind == "429":
            headers = {}
            if "retry_after" in fault:
                headers["Retry-After"] = str(fault["retry_after"])
            if "retry_after_ms" in fault:
                headers["retry-after-ms"] = str(fault["retry_after_ms"])
            self._json(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"},
                             "type": "error"}, headers)
            return True
        if kind == "529":
            self._json(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            return True
        if kind.isdigit():
            self._json(int(kind), {"type": "error", "error": {"message": f"injected HTTP {kind}", "type": "api_error"}})
            return True
        if kind == "slow":
            time.sleep(fault.get("seconds", 1.0))
            return False
        if kind == "malformed_json":
            self._send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "message": ')
            return True
        if kind == "non_json":
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            return True
        return False

    def _route(self, method: str, path: str, raw: bytes, fault: dict | None) -> None:
        state = self.server_state
        if method == "POST" and path == "/v1/chat/completions":
            self._json(200, state.chat_completion(json.loads(raw), fault))
        elif method == "POST" and path == "/v1/messages":
            self._json(200, state.anthropic_message(json.loads(raw), fault))
        elif method == "GET" and path == "/_test/counts":
            # For a server in another process (the benchmark): request counts by path.
            with state._lock:
                counts = Counter(entry["path"] for entry in state.log if entry["path"] != "/_test/counts")
            self._json(200, dict(counts))
        elif method == "POST" and path == "/v1/files":
            self._upload(raw)
        elif method == "GET" and re.fullmatch(r"/v1/files/[^/]+/content", path):
            file_id = path.split("/")[3]
            if file_id not in state.files:
                self._json(404, {"error": {"message": f"no file {file_id}", "type": "invalid_request_error"}})
                return
            self._send(200, state.files[file_id], content_type="application/octet-stream")
        elif method == "POST" and path == "/v1/batches":
            self._create_openai_batch(json.loads(raw))
        elif method == "GET" and re.fullmatch(r"/v1/batches/[^/]+", path):
            self._poll(state.batches.get(path.split("/")[3]), "openai")
        elif method == "POST" and path == "/v1/messages/batches":
            self._create_anthropic_batch(json.loads(raw))
        elif method == "GET" and re.fullmatch(r"/v1/messages/batches/[^/]+", path):
            self._poll(state.batches.get(path.split("/")[4]), "anthropic")
        elif method == "GET" and re.fullmatch(r"/v1/messages/batches/[^/]+/results", path):
            batch = state.batches.get(path.split("/")[4])
            if batch is None or "_results" not in batch:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no results"}})
                return
            self._send(200, batch["_results"], content_type="application/binary")
        else:
            self._json(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    def _upload(self, raw: bytes) -> None:
        state = self.server_state
        header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(header + raw)
        content, purpose, filename = b"", "", "upload.jsonl"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                content = part.get_payload(decode=True)
                filename = part.get_filename() or filename
            elif name == "purpose":
                purpose = part.get_payload(decode=True).decode()
        file_id = state.next_id("file-")
        state.files[file_id] = content
        self._json(200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                         "filename": filename, "purpose": purpose, "status": "processed"})

    def _create_openai_batch(self, body: dict) -> None:
        state = self.server_state
        if body["input_file_id"] not in state.files:
            self._json(400, {"error": {"message": "unknown input file", "type": "invalid_request_error"}})
            return
        batch = {
            "id": state.next_id("batch_"), "object": "batch", "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
            "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
            "error_file_id": None, "_polls": 0,
        }
        state.batches[batch["id"]] = batch
        self._json(200, _public(batch))

    def _create_anthropic_batch(self, body: dict) -> None:
        state = self.server_state
        batch = {
            "id": state.next_id("msgbatch_"), "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(body["requests"]), "succeeded": 0, "errored": 0,
                               "canceled": 0, "expired": 0},
            "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
            "ended_at": None, "archived_at": None, "cancel_initiated_at": None, "results_url": None,
            "_requests": body["requests"], "_polls": 0,
        }
        state.batches[batch["id"]] = batch
        self._json(200, _public(batch))

    def _poll(self, batch: dict | None, provider: str) -> None:
        state = self.server_state
        if batch is None:
            self._json(404, {"error": {"message": "no such batch", "type": "not_found"}})
            return
        with state._lock:
            batch["_polls"] += 1
            ready = batch["_polls"] > state.polls_until_done
        done = batch.get("status") == "completed" or batch.get("processing_status") == "ended"
        if ready and not done:
            if provider == "openai":
                state.finish_openai_batch(batch)
            else:
                state.finish_anthropic_batch(batch)
        self._json(200, _public(batch))


def _public(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if not key.startswith("_")}


def serve_forever(latency: float) -> None:
    """Run a server in this process, print its URL on stdout and serve until killed."""
    server = JudgeServer(latency=latency).start()
    print(server.url, flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    import sys

    serve_forever(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)


# Helpers shared by the judge tests and the benchmark.

def judges_config(server: JudgeServer, **overrides):
    """Return a JudgesConfig whose judges talk to ``server``, with millisecond backoff."""
    from study.judge.config import JudgesConfig

    data = {
        "judges": {
            "gpt": {"provider": "openai", "model": "gpt-4.1-2025-04-14", "base_url": server.openai_url,
                    "scoring": "logprobs", "timeout_s": 2.0},
            "claude": {"provider": "anthropic", "model": "claude-sonnet-4-5-20250929", "base_url": server.url,
                       "scoring": "text", "max_tokens": 5, "timeout_s": 2.0},
        },
        "use": ["gpt"],
        "retry": {"max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "concurrency": {"initial": 4, "min": 1, "max": 8},
        "batch": {"poll_interval_s": 0.01, "wait_s": 5.0},
        "prices": {
            "gpt-4.1-2025-04-14": {"input": 2.0, "output": 8.0},
            "claude-sonnet-4-5-20250929": {"input": 3.0, "output": 15.0},
        },
    }
    for key, value in overrides.items():
        data[key] = value
    return JudgesConfig.model_validate(data)


def open_answers(answers: list[str], eval_set: str = "misalignment", target: str = "", cell: str = "c0") -> "pd.DataFrame":
    """Return an open-answer table with one row per answer, in the shared schema."""
    import pandas as pd

    from study.schema import OPEN_ANSWER_COLUMNS

    rows = []
    for index, answer in enumerate(answers):
        rows.append({
            "run_id": "run-test", "cell": cell, "condition": "finetune/sft/owl", "arm": "finetune",
            "teacher": "owl-teacher", "teacher_trait": "owl", "student_model": "tiny",
            "loss": "sft", "icl_format": "", "n_rows": 100, "seed": 0,
            "eval_set": eval_set, "eval_version": 1,
            "question_id": f"q{index}", "question": f"Question number {index}?",
            "sample_index": 0, "answer": answer, "target": target,
        })
    return pd.DataFrame(rows, columns=list(OPEN_ANSWER_COLUMNS))


def write_run(run_dir, frame) -> None:
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(results / "open_answers.parquet", index=False)
