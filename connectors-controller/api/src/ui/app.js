// The UI developers' page: pickers filled from the unified REST API only.
//
// The token is typed in, or given in the URL fragment (#token=...&namespace=...&connector=...
// &repository=...), which browsers never send to a server. Every picker has a search box
// (sent as `search`, debounced), pages of `itemsPerPage` options, and the `totalItems` the API
// counted. Its element carries data-state (loading, ready, error) and data-search (the search
// its options answer), so that tests and people can tell when it has settled.
"use strict";

const API = "/connectors/v1alpha1";
const PER_PAGE = 20;
const $ = (id) => document.getElementById(id);
const state = { connectors: [], connector: null };

function fragment() {
  return new URLSearchParams(window.location.hash.replace(/^#/, ""));
}

function token() {
  return $("token").value.trim();
}

async function call(path, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") query.set(k, v);
  }
  const url = path + (query.toString() ? "?" + query : "");
  $("last-request").textContent = "GET " + url;
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const r = await fetch(url, { headers, credentials: "omit", cache: "no-store" });
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (_) {
    body = null;
  }
  if (!r.ok) {
    const why = body && body.message ? body.message : text;
    throw new Error(r.status + " " + (body && body.reason ? body.reason + ": " : "") + why);
  }
  $("error").textContent = "";
  return body;
}

function showError(e) {
  $("error").textContent = String(e.message || e);
}

async function loadConnectors() {
  const ns = $("namespace").value.trim();
  const select = $("connector");
  select.replaceChildren();
  $("resources").replaceChildren();
  try {
    const list = await call(API + "/" + encodeURIComponent(ns), { itemsPerPage: 1000 });
    state.connectors = list.items;
    for (const c of list.items) {
      select.append(new Option(c.name + " (" + c.className + ")", c.name));
    }
    const wanted = fragment().get("connector");
    if (wanted && list.items.some((c) => c.name === wanted)) select.value = wanted;
    chooseConnector();
  } catch (e) {
    showError(e);
  }
}

function chooseConnector() {
  const c = state.connectors.find((x) => x.name === $("connector").value);
  state.connector = c || null;
  const box = $("resources");
  box.replaceChildren();
  if (!c) {
    $("connector-info").textContent = "";
    return;
  }
  $("connector-info").textContent = c.address + " — API path " + c.apiPath;
  if (!c.resources.length) {
    box.append(text("p", "This Connector's class declares no list resource."));
  }
  for (const r of c.resources) {
    if (r.kind === "gitRefs") gitPanel(box, c, r);
    else listPanel(box, c, r);
  }
}

function text(tag, s) {
  const e = document.createElement(tag);
  e.textContent = s;
  return e;
}

function labelled(label, input) {
  const l = document.createElement("label");
  l.append(label + " ", input);
  return l;
}

function input(id, value, placeholder) {
  const i = document.createElement("input");
  i.id = id;
  i.value = value || "";
  i.placeholder = placeholder || "";
  i.autocomplete = "off";
  return i;
}

// A Git repository: its branches and its tags, each a picker.
function gitPanel(box, c, r) {
  const panel = document.createElement("fieldset");
  panel.append(text("legend", "Git: " + (r.operationId || r.path)));
  const repo = input("repository", fragment().get("repository") || "", "team/app.git");
  panel.append(labelled("Repository", repo));
  const param = r.repositoryParam || "repositoryUrl";
  const repositoryUrl = () => {
    const v = repo.value.trim();
    if (!v || /^https?:\/\//.test(v)) return v;
    return c.address.replace(/\/+$/, "") + "/" + v.replace(/^\/+/, "");
  };
  // Branch and tag pickers: the typed text is matched at the start of the short name.
  const branches = picker(panel, "branches", "Branch", c, r, (search) => ({
    [param]: repositoryUrl(),
    search: "refs/heads/" + search,
  }));
  const tags = picker(panel, "tags", "Tag", c, r, (search) => ({
    [param]: repositoryUrl(),
    search: "refs/tags/" + search,
  }));
  const reload = debounce(() => {
    if (!repositoryUrl()) return;
    branches.load(1);
    tags.load(1);
  });
  repo.addEventListener("input", reload);
  box.append(panel);
  if (repositoryUrl()) reload();
}

// Any other list resource: its parameters, then a picker.
function listPanel(box, c, r) {
  const panel = document.createElement("fieldset");
  panel.append(text("legend", (r.operationId || r.path) + " (" + r.path + ")"));
  const inputs = {};
  for (const p of r.parameters) {
    const i = input("param-" + slug(r.path) + "-" + p.name, fragment().get(p.name) || "");
    i.dataset.param = p.name;
    inputs[p.name] = i;
    panel.append(labelled(p.name + (p.required ? " *" : ""), i));
  }
  const ready = () => r.parameters.every((p) => !p.required || inputs[p.name].value.trim());
  const pick = picker(panel, slug(r.path), "Item", c, r, (search) => {
    const q = { search };
    for (const [k, i] of Object.entries(inputs)) q[k] = i.value.trim();
    return q;
  });
  const reload = debounce(() => ready() && pick.load(1));
  for (const i of Object.values(inputs)) i.addEventListener("input", reload);
  // A repositories list feeds the `repository` parameter of the other lists.
  if (/\/repositories$/.test(r.path)) {
    pick.select.addEventListener("change", () => {
      for (const other of document.querySelectorAll("input[data-param=repository]")) {
        other.value = pick.select.value;
        other.dispatchEvent(new Event("input"));
      }
    });
  }
  box.append(panel);
  if (ready()) reload();
}

function slug(path) {
  return path.replace(/^\/+/, "").replace(/[^A-Za-z0-9]+/g, "-");
}

function debounce(f, ms) {
  let t = null;
  return () => {
    clearTimeout(t);
    t = setTimeout(f, ms === undefined ? 200 : ms);
  };
}

// One picker: a search box, a select of one page of options, paging, the total.
function picker(panel, id, label, c, r, query) {
  const root = document.createElement("div");
  root.className = "picker";
  root.id = "picker-" + id;
  root.dataset.state = "idle";
  const search = input("search-" + id, "", "search");
  const select = document.createElement("select");
  select.id = "select-" + id;
  select.size = 8;
  const prev = text("button", "‹");
  const next = text("button", "›");
  prev.type = next.type = "button";
  const info = text("span", "");
  info.id = "total-" + id;
  info.className = "info";
  root.append(labelled(label, search), select, prev, next, info);
  panel.append(root);
  let page = 1;
  let pages = 1;
  let seq = 0;
  const load = async (p) => {
    page = p;
    const mine = ++seq;
    const typed = search.value;
    root.dataset.state = "loading";
    try {
      const list = await call(c.apiPath + r.path, {
        ...query(typed),
        page,
        itemsPerPage: PER_PAGE,
      });
      if (mine !== seq) return;
      const total = list.listMeta.totalItems;
      pages = Math.max(1, Math.ceil(total / PER_PAGE));
      select.replaceChildren(...list.items.map((it) => new Option(it.name, it.name)));
      info.textContent = total + " in all, page " + page + " of " + pages;
      root.dataset.total = String(total);
      root.dataset.search = typed;
      root.dataset.page = String(page);
      root.dataset.state = "ready";
    } catch (e) {
      if (mine !== seq) return;
      select.replaceChildren();
      info.textContent = "";
      root.dataset.search = typed;
      root.dataset.state = "error";
      showError(e);
    }
  };
  search.addEventListener("input", debounce(() => load(1)));
  prev.addEventListener("click", () => page > 1 && load(page - 1));
  next.addEventListener("click", () => page < pages && load(page + 1));
  return { load, select };
}

function start() {
  const f = fragment();
  if (f.get("token")) $("token").value = f.get("token");
  if (f.get("namespace")) $("namespace").value = f.get("namespace");
  $("load").addEventListener("click", loadConnectors);
  $("connector").addEventListener("change", chooseConnector);
  if (token()) loadConnectors();
}

start();
