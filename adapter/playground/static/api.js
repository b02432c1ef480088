// The playground's side of the OpenAI API: list models, stream one request (SSE over
// fetch, so a Stop aborts the HTTP request and the server cancels the generation), and
// the "copy as curl" / "copy as Python" text of the exact request that was sent.
(function () {
  "use strict";

  class ApiError extends Error {
    // status: the HTTP status, or null for an error event inside a 200 stream
    constructor(status, error, retryAfter) {
      super(error && error.message ? String(error.message) : "The server answered with an error");
      this.status = status;
      this.type = error ? error.type : undefined;
      this.param = error ? error.param : undefined;
      this.code = error ? error.code : undefined;
      this.retryAfter = retryAfter || null;
    }

    describe() {
      const label = [this.status, this.code || this.type].filter(Boolean).join(" ");
      const retry = this.retryAfter ? ` (retry after ${this.retryAfter} s)` : "";
      return `${label ? label + ": " : ""}${this.message}${retry}`;
    }
  }

  function headers(apiKey) {
    const result = { "Content-Type": "application/json" };
    if (apiKey) result.Authorization = `Bearer ${apiKey}`;
    return result;
  }

  async function errorOf(response) {
    const text = await response.text();
    let error = null;
    try {
      error = JSON.parse(text).error;
    } catch (_) {
      // not our JSON envelope (a proxy's page?): show the text itself
    }
    if (!error || typeof error !== "object") error = { message: text || response.statusText };
    return new ApiError(response.status, error, response.headers.get("Retry-After"));
  }

  async function listModels(apiKey) {
    const response = await fetch("/v1/models", { headers: headers(apiKey) });
    if (!response.ok) throw await errorOf(response);
    return (await response.json()).data || [];
  }

  async function post(path, body, apiKey) {
    const response = await fetch(path, {
      method: "POST", headers: headers(apiKey), body: JSON.stringify(body),
    });
    return response.ok ? response.json() : Promise.reject(await errorOf(response));
  }

  // Streams `body` to `path`; onText(piece) for each piece of generated text. Resolves to
  // the answer's stats {ttftMs, elapsedMs, usage, finishReason, pieces}; finishReason is
  // "stopped" (and usage null) when `signal` aborted it. Rejects with an ApiError.
  async function stream(path, body, { apiKey, signal, onText }) {
    const started = performance.now();
    const stats = { ttftMs: null, elapsedMs: null, usage: null, finishReason: null, pieces: 0 };
    const onEvent = (data) => {
      const payload = JSON.parse(data);
      if (payload.error) throw new ApiError(null, payload.error);
      if (payload.usage) stats.usage = payload.usage;
      for (const choice of payload.choices || []) {
        const text = choice.delta ? choice.delta.content : choice.text;
        if (text) {
          if (stats.ttftMs === null) stats.ttftMs = performance.now() - started;
          stats.pieces += 1;
          onText(text);
        }
        if (choice.finish_reason) stats.finishReason = choice.finish_reason;
      }
    };
    try {
      const response = await fetch(path, {
        method: "POST", headers: headers(apiKey), body: JSON.stringify(body), signal,
      });
      if (!response.ok) throw await errorOf(response);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let boundary;
        while ((boundary = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary + 2);
          const data = event.split("\n").filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trim()).join("\n");
          if (data && data !== "[DONE]") onEvent(data);
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") throw error;
      stats.finishReason = "stopped"; // the HTTP request is gone: the server cancels it
      stats.usage = null;
    }
    stats.elapsedMs = performance.now() - started;
    return stats;
  }

  // The line under an answer: TTFT, decode speed, tokens in and out, finish reason.
  function describeStats(stats) {
    const output = stats.usage ? stats.usage.completion_tokens : null;
    const counted = output !== null ? output : stats.pieces;
    const decodeMs = stats.ttftMs === null ? null : stats.elapsedMs - stats.ttftMs;
    const speed = decodeMs > 0 && counted > 1 ? (((counted - 1) * 1000) / decodeMs).toFixed(1) : "—";
    const prompt = stats.usage ? stats.usage.prompt_tokens : "—";
    const shown = output !== null ? output : `~${stats.pieces}`; // stopped: the pieces shown
    const ttft = stats.ttftMs === null ? "—" : `${Math.round(stats.ttftMs)} ms`;
    return `TTFT ${ttft} · ${speed} tokens/s · ${prompt} in / ${shown} out · finish: ${stats.finishReason || "—"}`;
  }

  // --- the exact request as a command or a program -------------------------------------

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function curlSnippet(origin, path, body, withKey) {
    const lines = [
      `curl -s${body.stream ? "N" : ""} ${origin}${path}`,
      "  -H 'Content-Type: application/json'",
    ];
    if (withKey) lines.push('  -H "Authorization: Bearer $TRITIUM_API_KEY"');
    lines.push(`  -d ${shellQuote(JSON.stringify(body, null, 2))}`);
    return lines.join(" \\\n");
  }

  // Python literal of a JSON value, on one line when short, else one item per line.
  function pythonLiteral(value, indent) {
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    const pad = "    ".repeat(indent + 1);
    const isList = Array.isArray(value);
    const items = isList
      ? value.map((item) => pythonLiteral(item, indent + 1))
      : Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${pythonLiteral(item, indent + 1)}`);
    const [open, close] = isList ? ["[", "]"] : ["{", "}"];
    const oneLine = open + items.join(", ") + close;
    if (oneLine.length <= 72 && !oneLine.includes("\n")) return oneLine;
    return `${open}\n${items.map((item) => pad + item + ",").join("\n")}\n${"    ".repeat(indent)}${close}`;
  }

  // Keyword arguments of the OpenAI SDK's create(); anything else goes in extra_body.
  const SDK_ARGUMENTS = {
    "/v1/chat/completions": new Set([
      "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "max_completion_tokens",
      "max_tokens", "metadata", "n", "presence_penalty", "response_format", "seed", "stop",
      "stream", "stream_options", "temperature", "top_logprobs", "top_p", "user",
    ]),
    "/v1/completions": new Set([
      "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
      "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
      "suffix", "temperature", "top_p", "user",
    ]),
  };

  function pythonSnippet(origin, path, body, withKey) {
    const known = SDK_ARGUMENTS[path];
    const extra = {};
    const argumentLines = [];
    for (const [name, value] of Object.entries(body)) {
      if (known.has(name)) argumentLines.push(`    ${name}=${pythonLiteral(value, 1)},`);
      else extra[name] = value;
    }
    if (Object.keys(extra).length) argumentLines.push(`    extra_body=${pythonLiteral(extra, 1)},`);
    const chat = path === "/v1/chat/completions";
    const key = withKey ? 'os.environ["TRITIUM_API_KEY"]' : '"unused"';
    const lines = withKey ? ["import os", ""] : [];
    lines.push(
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${JSON.stringify(origin + "/v1")}, api_key=${key})`,
      `response = client.${chat ? "chat.completions" : "completions"}.create(`,
      ...argumentLines,
      ")",
    );
    const piece = chat ? "chunk.choices[0].delta.content or \"\"" : "chunk.choices[0].text";
    if (body.stream) {
      lines.push(
        "for chunk in response:",
        "    if chunk.choices:",
        `        print(${piece}, end="", flush=True)`,
        "    if chunk.usage:",
        "        print(\"\\n\", chunk.usage)",
      );
    } else {
      lines.push(chat ? "print(response.choices[0].message.content)" : "print(response.choices[0].text)");
    }
    return lines.join("\n") + "\n";
  }

  window.TritiumApi = {
    ApiError, listModels, post, stream, describeStats, curlSnippet, pythonSnippet, pythonLiteral,
  };
})();
