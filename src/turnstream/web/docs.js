// Renders /openapi.json as a list of operations grouped by tag; no dependencies.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function resolve(spec, schema, depth) {
  if (!schema || depth > 4) return schema;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve(spec, spec.components.schemas[name], depth + 1);
  }
  if (schema.properties) {
    const props = {};
    for (const [k, v] of Object.entries(schema.properties)) props[k] = resolve(spec, v, depth + 1);
    return { ...schema, properties: props };
  }
  if (schema.items) return { ...schema, items: resolve(spec, schema.items, depth + 1) };
  return schema;
}

function operation(spec, path, verb, op) {
  const body = el("div", { class: "body" });
  if (op.summary) body.append(el("p", {}, op.summary));
  const request = op.requestBody && op.requestBody.content["application/json"].schema;
  if (request) {
    body.append(el("h4", {}, "Request body"),
      el("pre", {}, JSON.stringify(resolve(spec, request, 0), null, 2)));
  }
  const codes = el("p", { class: "codes" });
  for (const [code, r] of Object.entries(op.responses || {})) {
    codes.append(el("span", {}, `${code} ${r.description || ""}`));
  }
  body.append(el("h4", {}, "Responses"), codes);
  return el("details", {},
    el("summary", {}, el("span", { class: `verb ${verb}` }, verb.toUpperCase()),
      el("span", { class: "path" }, path)),
    body);
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  document.getElementById("about").textContent = spec.info.description;
  const groups = {};
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [verb, op] of Object.entries(ops)) {
      const tag = (op.tags || ["other"])[0];
      (groups[tag] = groups[tag] || []).push(operation(spec, path, verb, op));
    }
  }
  const main = document.getElementById("ops");
  for (const [tag, items] of Object.entries(groups)) main.append(el("h2", {}, tag), ...items);
}).catch((e) => {
  document.getElementById("about").textContent = `Could not load /openapi.json: ${e}`;
});
