// The playground page: chat and generate tabs over this server's /v1 API. State that
// outlives the page (conversation, parameters, API key, prompt) is in localStorage only.
(function () {
  "use strict";

  const Api = window.TritiumApi;
  const Markdown = window.TritiumMarkdown;
  const Settings = window.TritiumSettings;
  const { STORAGE, load, save } = Settings;
  const CHAT_PATH = "/v1/chat/completions";
  const COMPLETIONS_PATH = "/v1/completions";
  const PROBE_MODEL = "tritium-playground-capability-probe";

  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), modelStatus: $("model-status"), error: $("error"), errorText: $("error-text"),
    system: $("system-prompt"), messages: $("messages"), chatForm: $("chat-form"), chatInput: $("chat-input"),
    chatSend: $("chat-send"), chatStop: $("chat-stop"), regenerate: $("chat-regenerate"), clear: $("chat-clear"),
    generateForm: $("generate-form"), prompt: $("generate-prompt"), generateSend: $("generate-send"),
    generateStop: $("generate-stop"), generateResult: $("generate-result"), promptEcho: $("generate-prompt-echo"),
    generateOutput: $("generate-output"),
    renderMarkdown: $("render-markdown"), apiKeyBox: $("api-key-box"), apiKey: $("api-key"),
    dialog: $("snippet-dialog"), snippetTitle: $("snippet-title"),
    snippetText: $("snippet-text"), snippetStatus: $("snippet-status"), template: $("message-template"),
  };

  const state = {
    messages: [], // {role, content, stats?, params?, model?} of the conversation shown
    running: null, // {controller, kind: "chat" | "generate"} while a request streams
  };

  function saveChat() {
    save(STORAGE.chat, { system: ui.system.value, messages: state.messages });
  }

  function apiKey() {
    return ui.apiKey.value.trim();
  }

  // --- errors --------------------------------------------------------------------------

  function showError(error) {
    const text = error instanceof Api.ApiError ? error.describe()
      : error instanceof TypeError ? `Cannot reach the server: ${error.message}`
        : String(error && error.message ? error.message : error);
    ui.errorText.textContent = text;
    ui.error.hidden = false;
    if (error instanceof Api.ApiError && error.status === 401) {
      ui.apiKeyBox.open = true;
      ui.apiKey.focus();
    }
    if (error instanceof Api.ApiError && error.status === 400 && error.code === "unsupported_parameter") {
      Settings.hideRefused(error);
    }
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
  }

  // --- requests ------------------------------------------------------------------------

  function requestBody(fields, params) {
    return {
      model: ui.model.value,
      ...fields,
      ...params,
      stream: true,
      stream_options: { include_usage: true },
    };
  }

  function chatRequest(messages, params) {
    const history = messages.map(({ role, content }) => ({ role, content }));
    const system = ui.system.value.trim();
    if (system) history.unshift({ role: "system", content: system });
    return { path: CHAT_PATH, body: requestBody({ messages: history }, params) };
  }

  // --- running a request ---------------------------------------------------------------

  function setRunning(kind, controller) {
    state.running = controller ? { kind, controller } : null;
    const busy = state.running !== null;
    ui.chatSend.disabled = busy;
    ui.generateSend.disabled = busy;
    ui.chatStop.disabled = !(busy && kind === "chat");
    ui.generateStop.disabled = !(busy && kind === "generate");
    ui.regenerate.disabled = busy || state.messages.length === 0;
    ui.messages.setAttribute("aria-busy", String(busy && kind === "chat"));
  }

  function stop() {
    if (state.running) state.running.controller.abort();
  }

  // Streams `request`, calling onText per piece; returns what Api.stream measured (a Stop
  // gives finishReason "stopped"), or null after showing an API error.
  async function run(kind, request, onText) {
    clearError();
    const controller = new AbortController();
    setRunning(kind, controller);
    try {
      return await Api.stream(request.path, request.body, {
        apiKey: apiKey(), signal: controller.signal, onText,
      });
    } catch (error) {
      showError(error);
      return null;
    } finally {
      setRunning(kind, null);
    }
  }

  // --- rendering -----------------------------------------------------------------------

  function renderContent(container, text) {
    if (ui.renderMarkdown.checked) Markdown.render(text, container);
    else Markdown.renderPlain(text, container);
  }

  // Repaints at most once a frame while tokens arrive; follows the answer down unless the
  // reader scrolled up.
  function painter(container, text) {
    let scheduled = false;
    return () => {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        const log = ui.messages;
        const following = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
        renderContent(container, text());
        if (following) log.scrollTop = log.scrollHeight;
      });
    };
  }

  function button(label, onClick, extraClass) {
    const node = document.createElement("button");
    node.type = "button";
    node.textContent = label;
    if (extraClass) node.className = extraClass;
    node.addEventListener("click", onClick);
    return node;
  }

  function fillStats(footer, stats, request) {
    footer.replaceChildren();
    const text = document.createElement("span");
    text.className = "numbers";
    text.textContent = Api.describeStats(stats);
    footer.dataset.finishReason = stats.finishReason || "";
    footer.append(
      text,
      button("Copy as curl", () => showSnippet("curl", request)),
      button("Copy as Python", () => showSnippet("python", request)),
    );
    footer.hidden = false;
  }

  function messageView(message, index) {
    const view = ui.template.content.firstElementChild.cloneNode(true);
    view.classList.add(message.role);
    view.dataset.index = String(index);
    view.querySelector(".role").textContent = message.role === "user" ? "You" : message.model || "Assistant";
    renderContent(view.querySelector(".content"), message.content);
    const actions = view.querySelector(".actions");
    if (message.role === "user") actions.append(button("Edit", () => editMessage(index, view), "small"));
    if (message.stats) {
      fillStats(view.querySelector(".stats"), message.stats, chatRequest(state.messages.slice(0, index), message.params || {}));
    }
    return view;
  }

  function renderConversation() {
    ui.messages.replaceChildren(...state.messages.map(messageView));
    ui.messages.scrollTop = ui.messages.scrollHeight;
    setRunning(null, null);
  }

  // --- chat ----------------------------------------------------------------------------

  async function answer() {
    let params;
    try {
      params = Settings.readParams();
    } catch (error) {
      showError(error);
      return;
    }
    const request = chatRequest(state.messages, params);
    const message = { role: "assistant", content: "", model: ui.model.value, params };
    const index = state.messages.push(message) - 1;
    const view = messageView(message, index);
    view.classList.add("streaming");
    ui.messages.append(view);
    const content = view.querySelector(".content");
    const repaint = painter(content, () => message.content);
    const stats = await run("chat", request, (text) => {
      message.content += text;
      repaint();
    });
    view.classList.remove("streaming");
    if (state.messages[index] !== message) return; // cleared or edited meanwhile
    if (stats === null && !message.content) { // an error before any text: no empty answer
      state.messages.splice(index, 1);
      view.remove();
    } else if (stats !== null) {
      message.stats = stats;
      renderContent(content, message.content);
      fillStats(view.querySelector(".stats"), stats, request);
    }
    saveChat();
    setRunning(null, null);
  }

  function send() {
    const text = ui.chatInput.value;
    if (state.running || !text.trim() || !ui.model.value) return;
    state.messages.push({ role: "user", content: text });
    ui.chatInput.value = "";
    ui.messages.append(messageView(state.messages[state.messages.length - 1], state.messages.length - 1));
    saveChat();
    answer();
  }

  function regenerate() {
    if (state.running || state.messages.length === 0) return;
    if (state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
    renderConversation();
    if (state.messages.length) answer();
  }

  function editMessage(index, view) {
    if (state.running) return;
    const content = view.querySelector(".content");
    const editor = document.createElement("textarea");
    editor.value = state.messages[index].content;
    editor.rows = Math.min(12, editor.value.split("\n").length + 1);
    editor.setAttribute("aria-label", "Edit the message");
    const resend = () => {
      if (!editor.value.trim()) return;
      state.messages = [...state.messages.slice(0, index), { role: "user", content: editor.value }];
      renderConversation();
      saveChat();
      answer();
    };
    editor.addEventListener("keydown", (event) => {
      if (isSendKey(event)) {
        event.preventDefault();
        resend();
      }
    });
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    buttons.append(button("Send edited", resend), button("Cancel", renderConversation));
    content.replaceChildren(editor, buttons);
    editor.focus();
  }

  function clearChat() {
    stop();
    state.messages = [];
    renderConversation();
    saveChat();
    clearError();
    ui.chatInput.focus();
  }

  // --- generate ------------------------------------------------------------------------

  async function generate() {
    const prompt = ui.prompt.value;
    if (state.running || !prompt || !ui.model.value) return;
    let params;
    try {
      params = Settings.readParams();
    } catch (error) {
      showError(error);
      return;
    }
    save(STORAGE.prompt, prompt);
    const request = { path: COMPLETIONS_PATH, body: requestBody({ prompt }, params) };
    let completion = "";
    ui.generateResult.hidden = false;
    ui.generateResult.classList.add("streaming");
    ui.promptEcho.textContent = prompt;
    ui.generateOutput.textContent = "";
    const footer = ui.generateResult.querySelector(".stats");
    footer.hidden = true;
    const stats = await run("generate", request, (text) => {
      completion += text;
      ui.generateOutput.textContent = completion; // text only: never parsed as HTML
    });
    ui.generateResult.classList.remove("streaming");
    if (stats !== null) fillStats(footer, stats, request);
  }

  // --- copy as curl / Python -----------------------------------------------------------

  function showSnippet(kind, request) {
    const make = kind === "curl" ? Api.curlSnippet : Api.pythonSnippet;
    ui.snippetTitle.textContent = kind === "curl" ? "The request as curl" : "The request in Python (OpenAI SDK)";
    ui.snippetText.value = make(location.origin, request.path, request.body, Boolean(apiKey()));
    ui.snippetStatus.textContent = "";
    ui.dialog.showModal();
    ui.snippetText.focus();
    ui.snippetText.select();
  }

  async function copySnippet() {
    try {
      await navigator.clipboard.writeText(ui.snippetText.value);
      ui.snippetStatus.textContent = "Copied.";
    } catch (_) {
      ui.snippetText.select();
      ui.snippetStatus.textContent = "Select all and copy (Ctrl+C).";
    }
  }

  // --- models and what the server accepts ----------------------------------------------

  async function loadModels() {
    ui.modelStatus.textContent = "loading…";
    let models;
    try {
      models = await Api.listModels(apiKey());
    } catch (error) {
      ui.modelStatus.textContent = "unavailable";
      showError(error);
      return;
    }
    clearError();
    const wanted = ui.model.value || load(STORAGE.model, null);
    ui.model.replaceChildren(...models.map((card) => {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.max_model_len ? `${card.id} (${card.max_model_len} tokens)` : card.id;
      return option;
    }));
    if (models.some((card) => card.id === wanted)) ui.model.value = wanted;
    ui.modelStatus.textContent = models.length ? "" : "no model is being served";
    setRunning(null, null);
    probeStructuredOutputs();
  }

  // Shows the output-format box only if the server accepts response_format. The probe names
  // a model that does not exist, so it costs no generation: a server without structured
  // outputs answers 400 for the field before it looks the model up; one with them, 404.
  async function probeStructuredOutputs() {
    try {
      await Api.post(CHAT_PATH, {
        model: PROBE_MODEL,
        messages: [{ role: "user", content: "{}" }],
        response_format: { type: "json_object" },
        max_tokens: 1,
      }, apiKey());
      Settings.showOutputFormat(true);
    } catch (error) {
      Settings.showOutputFormat(error.status === 404 && error.code === "model_not_found");
    }
  }

  // --- keyboard, tabs, wiring ----------------------------------------------------------

  function isSendKey(event) {
    return event.key === "Enter" && !event.shiftKey && !event.isComposing;
  }

  function selectTab(name) {
    for (const tab of ["chat", "generate"]) {
      const selected = tab === name;
      $(`tab-${tab}`).setAttribute("aria-selected", String(selected));
      $(`tab-${tab}`).tabIndex = selected ? 0 : -1;
      $(`panel-${tab}`).hidden = !selected;
    }
    (name === "chat" ? ui.chatInput : ui.prompt).focus();
  }

  function wire() {
    ui.chatForm.addEventListener("submit", (event) => {
      event.preventDefault();
      send();
    });
    ui.chatInput.addEventListener("keydown", (event) => {
      if (isSendKey(event)) {
        event.preventDefault();
        send();
      }
    });
    ui.generateForm.addEventListener("submit", (event) => {
      event.preventDefault();
      generate();
    });
    ui.prompt.addEventListener("keydown", (event) => {
      if (isSendKey(event)) {
        event.preventDefault();
        generate();
      }
    });
    ui.chatStop.addEventListener("click", stop);
    ui.generateStop.addEventListener("click", stop);
    ui.regenerate.addEventListener("click", regenerate);
    ui.clear.addEventListener("click", clearChat);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.running) {
        event.preventDefault();
        stop();
      }
    });
    for (const tab of ["chat", "generate"]) {
      $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
      $(`tab-${tab}`).addEventListener("keydown", (event) => {
        if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
          selectTab(tab === "chat" ? "generate" : "chat");
          $(`tab-${tab === "chat" ? "generate" : "chat"}`).focus();
        }
      });
    }
    ui.system.addEventListener("change", saveChat);
    ui.model.addEventListener("change", () => save(STORAGE.model, ui.model.value));
    Settings.wire();
    ui.renderMarkdown.addEventListener("change", renderConversation);
    ui.apiKey.addEventListener("change", () => {
      save(STORAGE.apiKey, apiKey());
      loadModels();
    });
    $("error-close").addEventListener("click", clearError);
    $("snippet-copy").addEventListener("click", copySnippet);
    $("snippet-close").addEventListener("click", () => ui.dialog.close());
  }

  function start() {
    const chat = load(STORAGE.chat, {});
    ui.system.value = typeof chat.system === "string" ? chat.system : "";
    state.messages = Array.isArray(chat.messages) ? chat.messages.filter((m) => m && typeof m.content === "string") : [];
    ui.apiKey.value = load(STORAGE.apiKey, "") || "";
    ui.prompt.value = load(STORAGE.prompt, "") || "";
    Settings.restoreParams();
    wire();
    renderConversation();
    loadModels();
    ui.chatInput.focus();
  }

  start();
})();
