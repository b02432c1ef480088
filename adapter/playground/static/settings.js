// What the user set, kept in this browser's local storage only: the sampling parameters
// of the side panel (read into request fields), and the parameters the server refused.
(function () {
  "use strict";

  const STORAGE = {
    chat: "tritium.playground.chat",
    params: "tritium.playground.params",
    apiKey: "tritium.playground.apiKey",
    model: "tritium.playground.model",
    prompt: "tritium.playground.prompt",
  };
  // input id = request field -> how its text becomes the field's value
  const NUMBER_PARAMS = {
    temperature: parseFloat, top_p: parseFloat, top_k: Number, max_tokens: Number, seed: Number,
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    stop: $("stop"), responseFormat: $("response-format"), jsonSchema: $("json-schema"),
    jsonSchemaLabel: $("json-schema-label"), jsonModeField: $("json-mode-field"),
    unsupported: $("unsupported-note"), extra: $("extra-fields"),
  };

  function load(key, fallback) {
    try {
      const value = localStorage.getItem(key);
      return value === null ? fallback : JSON.parse(value);
    } catch (_) {
      return fallback;
    }
  }

  function save(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (_) {
      // storage full or disabled: the page still works, it just forgets
    }
  }

  // The request fields of the filled-in, visible parameters (empty = the model's default).
  function readParams() {
    const params = {};
    for (const [name, parse] of Object.entries(NUMBER_PARAMS)) {
      const input = $(name);
      if (!input.closest("[data-param]").hidden && input.value.trim() !== "") {
        params[name] = parse(input.value);
      }
    }
    const stops = ui.stop.value.split("\n").filter((line) => line !== "");
    if (stops.length) params.stop = stops;
    if (!ui.jsonModeField.hidden && ui.responseFormat.value !== "text") {
      params.response_format = responseFormat();
    }
    return { ...params, ...extraFields() };
  }

  // Any other request field (min_p, repetition_penalty, logit_bias, ignore_eos, ...).
  function extraFields() {
    const text = ui.extra.value.trim();
    if (!text) return {};
    let fields;
    try {
      fields = JSON.parse(text);
    } catch (error) {
      throw new Error(`More fields is not valid JSON: ${error.message}`);
    }
    if (fields === null || typeof fields !== "object" || Array.isArray(fields)) {
      throw new Error('More fields must be a JSON object, e.g. {"min_p": 0.05}');
    }
    return fields;
  }

  function responseFormat() {
    if (ui.responseFormat.value === "json_object") return { type: "json_object" };
    let schema;
    try {
      schema = JSON.parse(ui.jsonSchema.value || "{}");
    } catch (error) {
      throw new Error(`The JSON schema is not valid JSON: ${error.message}`);
    }
    return { type: "json_schema", json_schema: { name: "playground", schema } };
  }

  function saveParams() {
    const values = {};
    for (const name of [...Object.keys(NUMBER_PARAMS), "stop"]) values[name] = $(name).value;
    values.response_format = ui.responseFormat.value;
    values.json_schema = ui.jsonSchema.value;
    values.extra = ui.extra.value;
    save(STORAGE.params, values);
  }

  function restoreParams() {
    const values = load(STORAGE.params, {});
    for (const name of [...Object.keys(NUMBER_PARAMS), "stop"]) {
      if (typeof values[name] === "string") $(name).value = values[name];
    }
    if (values.response_format) ui.responseFormat.value = values.response_format;
    if (typeof values.json_schema === "string") ui.jsonSchema.value = values.json_schema;
    if (typeof values.extra === "string") ui.extra.value = values.extra;
    showSchemaBox();
  }

  function showSchemaBox() {
    const visible = ui.responseFormat.value === "json_schema";
    ui.jsonSchema.hidden = !visible;
    ui.jsonSchemaLabel.hidden = !visible;
  }

  function showOutputFormat(accepted) {
    ui.jsonModeField.hidden = !accepted;
    ui.jsonModeField.dataset.probed = "true";
  }

  // A parameter the server refuses as not supported is hidden, with the server's reason.
  function hideRefused(error) {
    const name = String(error.param || "").split(".")[0];
    const field = document.querySelector(`[data-param="${CSS.escape(name)}"]`);
    if (!field) return;
    field.hidden = true;
    if (name === "response_format") ui.responseFormat.value = "text";
    ui.unsupported.textContent = `Hidden: ${name} (${error.message}).`;
    ui.unsupported.hidden = false;
  }

  function wire() {
    document.querySelector("aside").addEventListener("change", saveParams);
    ui.responseFormat.addEventListener("change", showSchemaBox);
  }

  window.TritiumSettings = {
    STORAGE, load, save, readParams, restoreParams, showOutputFormat, hideRefused, wire,
  };
})();
