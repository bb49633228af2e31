// Renders the OpenAPI document of this server. Everything is built with DOM calls and
// textContent: no value from the document is ever parsed as HTML.
"use strict";

const AUTH = { admin: "admin token", consumer: "consumer token", metrics: "metrics token" };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resolve(doc, schema) {
  const seen = new Set();
  while (schema && typeof schema.$ref === "string" && !seen.has(schema.$ref)) {
    seen.add(schema.$ref);
    const name = schema.$ref.replace("#/components/schemas/", "");
    schema = (doc.components.schemas || {})[name];
  }
  return schema || {};
}

// A schema as indented text, a line per property, references resolved (to a bounded depth).
function describe(doc, schema, indent, depth) {
  schema = resolve(doc, schema);
  if (depth > 6) return "…";
  const pad = "  ".repeat(indent);
  const alternatives = schema.oneOf || schema.anyOf;
  if (alternatives) {
    return alternatives.map((s) => describe(doc, s, indent, depth + 1)).join("\n" + pad + "| ");
  }
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (schema.properties) {
    const required = new Set(schema.required || []);
    const lines = Object.entries(schema.properties).map(([name, property]) => {
      const note = resolve(doc, property).description;
      return pad + "  " + name + (required.has(name) ? "" : "?") + ": " +
        describe(doc, property, indent + 1, depth + 1) + (note ? "  // " + note : "");
    });
    return "{\n" + lines.join("\n") + "\n" + pad + "}";
  }
  if (type === "array" || (Array.isArray(schema.type) && schema.items)) {
    return "[" + describe(doc, schema.items || {}, indent, depth + 1) + "]";
  }
  if (schema.additionalProperties && typeof schema.additionalProperties === "object") {
    return "{ <name>: " + describe(doc, schema.additionalProperties, indent, depth + 1) + " }";
  }
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push("≥ " + schema.minimum);
  if (schema.maximum !== undefined) bounds.push("≤ " + schema.maximum);
  if (schema.format) bounds.push(schema.format);
  return (type || "any") + (bounds.length ? " (" + bounds.join(", ") + ")" : "");
}

function schemaBlock(doc, content) {
  const [mediaType, body] = Object.entries(content || {})[0] || [];
  if (!mediaType) return element("span", "muted", "no body");
  const block = element("pre", "schema");
  block.textContent = mediaType === "application/json"
    ? describe(doc, body.schema, 0, 0)
    : mediaType;
  return block;
}

function operation(doc, path, method, op) {
  const details = element("details");
  details.dataset.search = (method + " " + path + " " + (op.summary || "")).toLowerCase();
  const summary = element("summary");
  summary.append(
    element("span", "method " + method, method.toUpperCase()),
    element("span", "path", path),
    element("span", "muted", op.summary || ""),
  );
  const schemes = (op.security || []).flatMap((s) => Object.keys(s));
  const optional = (op.security || []).some((s) => Object.keys(s).length === 0);
  summary.append(element("span", "auth", schemes.length === 0 ? "public"
    : schemes.map((s) => AUTH[s] || s).join(" or ") + (optional ? " (if set)" : "")));
  details.append(summary);

  const body = element("div", "operation");
  if (op.parameters && op.parameters.length) {
    body.append(element("h3", "", "Parameters"));
    const table = element("table");
    for (const p of op.parameters) {
      const row = table.insertRow();
      row.append(
        element("td", "path", p.name + (p.required ? "" : "?")),
        element("td", "muted", p.in),
        element("td", "", describe(doc, p.schema, 0, 0)),
        element("td", "", p.description || ""),
      );
    }
    body.append(table);
  }
  if (op.requestBody) {
    body.append(element("h3", "", "Body"), schemaBlock(doc, op.requestBody.content));
  }
  body.append(element("h3", "", "Answers"));
  const table = element("table");
  for (const [status, response] of Object.entries(op.responses || {})) {
    const row = table.insertRow();
    const cell = element("td");
    cell.append(element("div", "", response.description || ""), schemaBlock(doc, response.content));
    row.append(element("td", "status", status), cell);
  }
  body.append(table);
  details.append(body);
  return details;
}

function render(doc) {
  const about = document.getElementById("about");
  about.textContent = (doc.info.description || "") + " Version " + doc.info.version + ". ";
  const link = element("a", "", "openapi.json");
  link.href = "openapi.json";
  about.append(link);
  const routes = document.getElementById("routes");
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      routes.append(operation(doc, path, method, op));
    }
  }
  document.getElementById("filter").addEventListener("input", (event) => {
    const words = event.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const details of routes.children) {
      details.hidden = !words.every((w) => details.dataset.search.includes(w));
    }
  });
}

fetch("openapi.json")
  .then((response) => {
    if (!response.ok) throw new Error("openapi.json answered " + response.status);
    return response.json();
  })
  .then(render)
  .catch((error) => {
    const about = document.getElementById("about");
    about.className = "error";
    about.textContent = "Could not read the API description: " + error.message;
  });
