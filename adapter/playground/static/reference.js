// The API reference at /docs, drawn from this server's /openapi.json with DOM nodes (no
// library, no CDN, works offline): each operation with its request fields (type, limits,
// default, description), then the schemas they refer to.
(function () {
  "use strict";

  const METHODS = ["get", "post", "put", "patch", "delete"];
  // FastAPI lists 422 for every body; the adapter answers an invalid request with 400.
  const NEVER_SENT = new Set(["422"]);
  const FASTAPI_ONLY = new Set(["HTTPValidationError", "ValidationError"]);
  const LIMITS = [
    ["minimum", "≥ "], ["exclusiveMinimum", "> "], ["maximum", "≤ "], ["exclusiveMaximum", "< "],
    ["minLength", "length ≥ "], ["maxLength", "length ≤ "], ["minItems", "items ≥ "],
    ["maxItems", "items ≤ "],
  ];

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  const schemaName = (ref) => ref.split("/").pop();
  const schemaAnchor = (name) => `schema-${name}`;

  // Appends a readable type to `parent`, with a link for each named schema.
  function appendType(parent, schema) {
    if (!schema || Object.keys(schema).length === 0) {
      parent.append("any");
    } else if (schema.$ref) {
      const name = schemaName(schema.$ref);
      const link = element("a", name);
      link.href = `#${schemaAnchor(name)}`;
      parent.append(link);
    } else if (schema.anyOf || schema.oneOf) {
      (schema.anyOf || schema.oneOf).forEach((member, position) => {
        if (position > 0) parent.append(" | ");
        appendType(parent, member);
      });
    } else if (schema.const !== undefined) {
      parent.append(JSON.stringify(schema.const));
    } else if (schema.enum) {
      parent.append(schema.enum.map((value) => JSON.stringify(value)).join(" | "));
    } else if (schema.type === "array") {
      parent.append("array of ");
      appendType(parent, schema.items);
    } else if (schema.type === "object" && typeof schema.additionalProperties === "object") {
      parent.append("object of ");
      appendType(parent, schema.additionalProperties);
    } else {
      parent.append(schema.type || "any");
    }
  }

  function limitsOf(schema) {
    const found = [];
    for (const part of [schema, ...(schema.anyOf || [])]) {
      for (const [key, prefix] of LIMITS) {
        if (part[key] !== undefined) found.push(prefix + part[key]);
      }
    }
    return found.join(", ");
  }

  function fieldsTable(schema) {
    const table = element("table");
    const head = element("tr");
    for (const title of ["Field", "Type", "Limits", "Default", "Description"]) {
      const cell = element("th", title);
      cell.scope = "col";
      head.append(cell);
    }
    table.append(element("thead"), element("tbody"));
    table.tHead.append(head);
    const required = new Set(schema.required || []);
    for (const [name, field] of Object.entries(schema.properties || {})) {
      const row = element("tr");
      const nameCell = element("td");
      nameCell.append(element("code", name));
      if (required.has(name)) nameCell.append(element("span", " required", "muted"));
      const typeCell = element("td");
      appendType(typeCell, field);
      const fallback = field.default === undefined ? "" : JSON.stringify(field.default);
      row.append(nameCell, typeCell, element("td", limitsOf(field)), element("td", fallback),
        element("td", field.description || ""));
      table.tBodies[0].append(row);
    }
    return table;
  }

  function operationSection(path, method, operation) {
    const section = element("section", undefined, "operation");
    section.id = `${method}-${path}`.replace(/[^A-Za-z0-9_-]+/g, "-");
    const title = element("h2");
    title.append(element("code", `${method.toUpperCase()} ${path}`));
    section.append(title);
    if (operation.summary) section.append(element("p", operation.summary));
    if (operation.description) section.append(element("p", operation.description, "muted"));
    const body = operation.requestBody && operation.requestBody.content &&
      operation.requestBody.content["application/json"];
    if (body && body.schema) {
      const heading = element("h3", "Request body: ");
      appendType(heading, body.schema);
      section.append(heading);
    }
    const answers = element("ul");
    for (const [status, response] of Object.entries(operation.responses || {})) {
      if (!NEVER_SENT.has(status)) answers.append(element("li", `${status}: ${response.description || ""}`));
    }
    section.append(element("h3", "Responses"), answers);
    return section;
  }

  function render(schema, container) {
    const contents = element("nav");
    contents.setAttribute("aria-label", "Operations");
    const list = element("ul");
    contents.append(list);
    const operations = [];
    for (const [path, item] of Object.entries(schema.paths || {})) {
      for (const method of METHODS) {
        if (!item[method]) continue;
        const section = operationSection(path, method, item[method]);
        const link = element("a", `${method.toUpperCase()} ${path}`);
        link.href = `#${section.id}`;
        const entry = element("li");
        entry.append(link);
        list.append(entry);
        operations.push(section);
      }
    }
    const schemas = [element("h2", "Schemas")];
    for (const [name, definition] of Object.entries((schema.components || {}).schemas || {})) {
      if (FASTAPI_ONLY.has(name)) continue;
      const heading = element("h3");
      heading.id = schemaAnchor(name);
      heading.append(element("code", name));
      schemas.push(heading);
      if (definition.description) schemas.push(element("p", definition.description, "muted"));
      if (definition.properties) {
        schemas.push(fieldsTable(definition));
      } else {
        const type = element("p");
        appendType(type, definition);
        schemas.push(type);
      }
    }
    const intro = element("p", `${schema.info.title} ${schema.info.version}: every error is ` +
      'an OpenAI error object {"error": {"message", "type", "param", "code"}}.', "muted");
    container.replaceChildren(intro, contents, ...operations, ...schemas);
  }

  async function start() {
    const container = document.getElementById("reference");
    try {
      const response = await fetch("/openapi.json");
      if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
      render(await response.json(), container);
    } catch (error) {
      document.getElementById("error-text").textContent = String(error.message || error);
      document.getElementById("error").hidden = false;
    } finally {
      container.setAttribute("aria-busy", "false");
    }
  }

  start();
})();
