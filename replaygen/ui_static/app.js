// replaygen ui: draws the runs list, one run's timeline, and workflows & workers from the
// server's JSON. Every value from the store is set as text (text nodes, textContent,
// properties), never parsed as HTML; control characters are shown escaped.
"use strict";

(function () {
  const meta = (name) => document.querySelector('meta[name="' + name + '"]').content;
  const CSRF = meta("rg-csrf");
  const ACTIONS = meta("rg-actions") === "on";
  const STORE = meta("rg-store");
  const REFRESH_MS = 5000;
  const STATES = ["pending", "running", "sleeping", "waiting", "completed", "failed", "cancelled", "blocked"];
  const UNFINISHED = new Set(["pending", "running", "sleeping", "waiting", "blocked"]);
  const PURGED = "purged";  // a tombstone's state: outside STATES, listed only when asked for

  // ---- building the page: text only -----------------------------------------------------

  // What a terminal or a page would act on instead of showing: C0/C1 controls, DEL, line and
  // paragraph separators and bidi overrides. Shown as Python writes them (\x1b, \u202e).
  const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  const UNSAFE_BLOCK = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

  function escapeChar(c) {
    const code = c.charCodeAt(0);
    const named = { "\n": "\\n", "\r": "\\r", "\t": "\\t" }[c];
    if (named) return named;
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
  }

  // A value as nodes: plain text, with each control character as a marked escape.
  function textNodes(value, block) {
    const text = value === null || value === undefined ? "" : String(value);
    const re = block ? UNSAFE_BLOCK : UNSAFE;
    const out = [];
    let last = 0;
    text.replace(re, (c, at) => {
      if (at > last) out.push(document.createTextNode(text.slice(last, at)));
      out.push(el("span", { className: "ctl", title: "control character" }, escapeChar(c)));
      last = at + c.length;
      return c;
    });
    if (last < text.length || out.length === 0) out.push(document.createTextNode(text.slice(last)));
    return out;
  }

  // el("a", {href: ..., className: ...}, child, ...): children are nodes or text.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (value !== undefined && value !== null) node[key] = value;
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const txt = (value) => el("span", {}, textNodes(value, false));
  const runHref = (id) => "/run?id=" + encodeURIComponent(id);
  const runLink = (id) => el("a", { href: runHref(id), className: "runid" }, textNodes(id, false));

  function pill(state) {
    const known = STATES.includes(state) || state === PURGED ? state : "other";
    return el("span", { className: "pill s-" + known }, el("span", { className: "dot" }), txt(state));
  }

  // A stored value, cut by the server at a limit: its text and a way to fetch all of it.
  function valueBlock(v, fetchAll) {
    if (!v) return el("span", { className: "faint" }, "—");
    const pre = el("pre", { className: "value" }, textNodes(v.text, true));
    const wrap = el("div", {}, pre);
    if (v.cut && fetchAll) {
      const button = el("button", { className: "link", type: "button" }, "show all");
      const note = el("div", { className: "cutnote" },
        "cut at " + fmtInt(v.text.length) + " of " + fmtInt(v.length) + " characters", button);
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          const full = await fetchAll();
          pre.replaceChildren(...textNodes(full.text, true));
          note.remove();
        } catch (err) { button.disabled = false; toast(err.message, true); }
      });
      wrap.append(note);
    }
    return wrap;
  }

  // One line of a value (a result in the timeline), with the whole of it folded below.
  function oneLine(v, fetchAll, limit) {
    if (!v) return el("span", { className: "faint" }, "—");
    const flat = v.text.replace(/\s+/g, " ");
    const max = limit || 90;
    if (flat.length <= max && !v.cut) return el("span", { className: "oneline" }, textNodes(flat, false));
    const details = el("details", {}, el("summary", {}, el("span", { className: "oneline" },
      textNodes(flat.slice(0, max) + "…", false))));
    details.addEventListener("toggle", () => {
      if (details.open && details.childElementCount === 1) details.append(valueBlock(v, fetchAll));
    }, { once: false });
    return details;
  }

  function errorBlock(e, fetchTrace, fetchMessage) {
    if (!e) return null;
    const head = el("div", { className: "bad" }, el("strong", {}, txt(e.type)), ": ",
      textNodes(e.message.text, false), e.message.cut ? "…" : "");
    const wrap = el("div", {}, head);
    if (e.message.cut && fetchMessage) wrap.append(el("details", {}, el("summary", {}, "whole message"), valueBlock(e.message, fetchMessage)));
    if (e.traceback) {
      const details = el("details", {}, el("summary", {}, "traceback"));
      details.addEventListener("toggle", () => {
        if (details.open && details.childElementCount === 1) details.append(valueBlock(e.traceback, fetchTrace));
      });
      wrap.append(details);
    }
    return wrap;
  }

  // ---- numbers and times -----------------------------------------------------------------

  const fmtInt = (n) => Number(n).toLocaleString("en-US");
  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(t) {
    if (t === null || t === undefined || typeof t !== "number") return "—";
    const d = new Date(t * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtSpan(seconds) {
    const s = Math.abs(seconds);
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= size) {
        const rest = Math.floor((s % size) / (size === 86400 ? 3600 : size === 3600 ? 60 : 1));
        return Math.floor(s / size) + unit + (rest ? " " + rest + (unit === "d" ? "h" : unit === "h" ? "m" : "s") : "");
      }
    }
    return s.toFixed(0) + " s";
  }

  function fmtAgo(t, now) {
    if (typeof t !== "number") return "—";
    const delta = t - now;
    return delta > 0 ? "in " + fmtSpan(delta) : fmtSpan(delta) + " ago";
  }

  const when = (t, now) => typeof t === "number"
    ? el("span", { title: fmtAgo(t, now) }, fmtTime(t)) : el("span", { className: "faint" }, "—");

  // ---- talking to the server --------------------------------------------------------------

  async function getJSON(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") query.set(k, v);
    const response = await fetch(path + (query.toString() ? "?" + query : ""), { credentials: "same-origin" });
    return answer(response);
  }

  async function postJSON(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: JSON.stringify(body),
    });
    return answer(response);
  }

  async function answer(response) {
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) throw new Error((data && data.error) || response.status + " " + response.statusText);
    return data;
  }

  let toastTimer = null;
  function toast(message, bad) {
    const box = document.getElementById("toast");
    box.replaceChildren(...textNodes(message, false));
    box.className = "toast" + (bad ? " bad" : "");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, bad ? 9000 : 5000);
  }

  // ---- refreshing while open ----------------------------------------------------------------

  let refresh = null;   // the current page's reload function
  let lastShown = "";   // the JSON last drawn: unchanged data is not redrawn (open folds stay open)
  const live = () => document.getElementById("live").checked;

  function every() {
    if (refresh && live() && !document.hidden && !document.querySelector("dialog[open]")) refresh(false);
  }

  function showError(err) {
    document.getElementById("app").replaceChildren(
      el("div", { className: "panel" }, el("div", { className: "error-line" }, textNodes(err.message, false))));
  }

  // Fetch, and redraw only when the answer changed.
  async function load(fetcher, draw, force) {
    try {
      const data = await fetcher();
      const key = JSON.stringify(data, (k, v) => (k === "now" ? undefined : v));
      if (!force && key === lastShown) return;
      lastShown = key;
      draw(data);
    } catch (err) {
      if (force) showError(err); else toast(err.message, true);
    }
  }

  // ---- the runs list ----------------------------------------------------------------------------

  function runsPage() {
    const params = new URLSearchParams(location.search);
    const filter = {
      state: params.get("state") || "", workflow: params.get("workflow") || "",
      parent: params.get("parent") || "", q: params.get("q") || "", page: params.get("page") || "0",
    };
    const go = (changes) => {
      const next = Object.assign({}, filter, { page: "0" }, changes);
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(next)) if (v && !(k === "page" && v === "0")) query.set(k, v);
      location.search = query.toString();
    };
    refresh = (force) => load(() => getJSON("/api/runs", filter), (data) => drawRuns(data, filter, go), force);
    refresh(true);
  }

  function drawRuns(data, filter, go) {
    const chosen = new Set(filter.state ? filter.state.split(",") : []);
    const all = STATES.reduce((sum, s) => sum + (data.counts[s] || 0), 0);
    const chips = el("div", { className: "chips" },
      el("button", { type: "button", className: "chip" + (chosen.size ? "" : " on"), on: { click: () => go({ state: "" }) } },
        "All", el("span", { className: "n" }, fmtInt(all))),
      STATES.map((s) => el("button", {
        type: "button", className: "chip s-" + s + (chosen.has(s) ? " on" : ""),
        on: { click: () => go({ state: chosen.has(s) && chosen.size === 1 ? "" : s }) },
      }, el("span", { className: "dot" }), s, el("span", { className: "n" }, fmtInt(data.counts[s] || 0)))),
      data.purged || chosen.has(PURGED) ? el("button", {
        type: "button", className: "chip s-purged" + (chosen.has(PURGED) ? " on" : ""), title: "tombstones of purged runs (not in All)",
        on: { click: () => go({ state: chosen.has(PURGED) && chosen.size === 1 ? "" : PURGED }) },
      }, el("span", { className: "dot" }), PURGED, el("span", { className: "n" }, fmtInt(data.purged || 0))) : null);
    const workflow = el("select", { on: { change: (ev) => go({ workflow: ev.target.value }) } },
      el("option", { value: "" }, "every workflow"),
      data.workflows.map((w) => el("option", { value: w, selected: w === filter.workflow }, textNodes(w, false))));
    const search = el("input", { type: "search", className: "search", placeholder: "run id", value: filter.q });
    const parent = el("input", { type: "search", className: "search", placeholder: "children of run id", value: filter.parent });
    const form = el("form", { className: "row", on: { submit: (ev) => { ev.preventDefault(); go({ q: search.value, parent: parent.value }); } } },
      el("label", { className: "field" }, "Workflow", workflow),
      data.by_parent ? el("label", { className: "field" }, "Parent", parent) : null,
      el("label", { className: "field" }, "Find", search),
      el("button", { type: "submit" }, "Search"),
      (filter.q || filter.parent || filter.workflow || filter.state)
        ? el("button", { type: "button", className: "link", on: { click: () => { location.search = ""; } } }, "clear filters") : null);
    const panel = el("div", { className: "panel" }, el("div", { className: "filters" }, chips, form), runsTable(data, filter), pager(data, filter, go));
    const title = filter.parent ? ["Children of ", runLink(filter.parent)] : filter.q ? ["Run id ", el("code", {}, textNodes(filter.q, false))] : "Runs";
    document.getElementById("app").replaceChildren(
      el("div", { className: "page-head" }, el("h1", {}, title),
        data.total !== null ? el("span", { className: "count" }, fmtInt(data.total) + " runs") : null,
        el("span", { className: "updated" }, "updated " + fmtTime(data.now))),
      panel);
  }

  function runsTable(data, filter) {
    if (!data.runs.length) {
      const why = filter.q ? "No run has exactly this id." : "No runs match.";
      return el("div", { className: "empty" }, why);
    }
    const head = el("tr", {}, ["Run", "State", "Workflow", "Age", "Last step", "Detail"].map((h) => el("th", {}, h)));
    const rows = data.runs.map((r) => el("tr", {},
      el("td", {}, runLink(r.run_id)),
      el("td", { className: "nowrap" }, pill(r.state), r.unserved ? el("div", { className: "note" }, txt(r.unserved)) : null),
      el("td", {}, txt(r.workflow)),
      el("td", { className: "nowrap", title: fmtTime(r.created) }, fmtSpan(data.now - r.created)),
      el("td", {}, r.last ? el("span", { className: "mono" }, "#" + r.last.position + " " + r.last.kind + (r.last.name ? " " : ""), txt(r.last.name)) : el("span", { className: "faint" }, "—")),
      el("td", {}, el("div", { className: "detail clamp", title: r.detail.error || "" }, detailOf(r.detail, data.now)))));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
  }

  function waitsText(waits) {
    return waits.map((w, i) => [i ? ", " : "", w.child !== undefined ? ["child ", runLink(w.child)] : ["signal ", el("code", {}, textNodes(w.signal, false))]]);
  }

  function detailOf(d, now) {
    if (d.until !== undefined) return ["until " + fmtTime(d.until) + " (" + fmtAgo(d.until, now) + ")"];
    if (d.waits !== undefined) return ["for ", waitsText(d.waits), d.timeout ? ", timeout " + fmtTime(d.timeout) : ""];
    if (d.error !== undefined) return [txt(d.error), d.cut ? "…" : ""];
    if (d.note) return [d.note];
    return [];
  }

  function pager(data, filter, go) {
    const page = data.page;
    const from = page * data.size + (data.runs.length ? 1 : 0);
    const to = page * data.size + data.runs.length;
    const of = data.total !== null ? " of " + fmtInt(data.total) : "";
    return el("div", { className: "pager" },
      el("span", {}, fmtInt(from) + "–" + fmtInt(to) + of),
      el("span", { className: "spacer" }),
      el("button", { type: "button", disabled: page === 0, on: { click: () => go(Object.assign({}, filter, { page: String(page - 1) })) } }, "‹ Newer"),
      el("button", { type: "button", disabled: !data.more, on: { click: () => go(Object.assign({}, filter, { page: String(page + 1) })) } }, "Older ›"));
  }

  // ---- one run --------------------------------------------------------------------------------

  function runPage() {
    const params = new URLSearchParams(location.search);
    const id = params.get("id");
    if (id === null) { showError(new Error("no run given: open a run from the list")); return; }
    const state = { page: params.get("page") || "0", hit: params.get("at"), at: params.get("at") };
    refresh = (force) => load(() => getJSON("/api/run", { id: id, page: state.page, at: state.at }), (data) => {
      state.page = String(data.page);
      state.at = null;  // found once; paging and refreshing keep the page from now on
      drawRun(data, id, state);
    }, force);
    refresh(true);
  }

  function drawRun(data, id, state) {
    const r = data.run;
    const fetchValue = (what, seq) => () => getJSON("/api/value", { id: id, what: what, seq: seq });
    const parts = [
      el("div", { className: "crumbs" }, el("a", { href: "/" }, "Runs"), " / ",
        r.parent ? [runLink(r.parent), " / "] : null, txt(r.run_id)),
      el("div", { className: "page-head run-title" }, el("span", { className: "runid" }, textNodes(r.run_id, false)), pill(r.state),
        r.cancel_requested && UNFINISHED.has(r.state) ? el("span", { className: "note" }, "cancel requested") : null,
        el("span", { className: "updated" }, "updated " + fmtTime(data.now))),
    ];
    if (r.purged) parts.push(purgedBox(r));
    else if (r.state === "blocked" && r.error) parts.push(blockedBox(data, r, fetchValue, state));
    else if (r.error) parts.push(el("div", { className: "callout " + (r.state === "failed" ? "failed" : "cancelled") },
      el("h2", {}, r.state === "failed" ? "Failed" : "Ended with"), errorBlock(r.error, fetchValue("traceback"), fetchValue("error"))));
    parts.push(factsPanel(data, r));
    if (ACTIONS && data.actions && UNFINISHED.has(r.state)) parts.push(actionsPanel(r));
    parts.push(el("div", { className: "two" },
      el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, "Arguments")),
        el("div", { className: "panel-body" }, valueBlock(r.args, fetchValue("args")))),
      el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, r.result ? "Result" : "Signals queued")),
        el("div", { className: "panel-body" }, r.result ? valueBlock(r.result, fetchValue("result")) : signalsList(data, fetchValue)))));
    if (r.result && data.signals.length) parts.push(el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, "Signals queued")), el("div", { className: "panel-body" }, signalsList(data, fetchValue))));
    parts.push(timelinePanel(data, id, state, fetchValue));
    document.getElementById("app").replaceChildren(...parts);
  }

  function purgedBox(r) {
    return el("div", { className: "callout cancelled purged" },
      el("h2", {}, "Purged"),
      el("div", {}, "This run was purged" + (r.purged.had ? " (it had " + r.purged.had + ")" : "") +
        ": its journal, result and signals are no longer kept; its arguments are kept as a hash only, so starting it again with the same workflow and arguments starts nothing."),
      el("div", { className: "muted" }, txt(r.purged.message)));
  }

  function blockedBox(data, r, fetchValue, state) {
    const jump = data.blocked_at !== null ? el("button", { type: "button", className: "link", on: { click: () => jumpTo(data, state, data.blocked_at) } }, "show position " + data.blocked_at + " in the timeline") : null;
    const message = valueBlock(r.error.message, fetchValue("error"));
    return el("div", { className: "callout blocked" },
      el("h2", {}, r.crash_loop ? "Blocked: a crash loop" : "Blocked: the code no longer replays this run"),
      el("div", { className: "muted" }, txt(r.error.type), r.crash_loop ? " — its worker died again and again in the same step." : " — what the journal holds and what the code yielded:"),
      message, jump ? el("div", { className: "cutnote" }, jump) : null);
  }

  // Show the page of the timeline that holds ``position`` (the server finds it), marked.
  function jumpTo(data, state, position) {
    state.hit = String(position);
    state.at = String(position);
    const url = new URL(location.href);
    url.searchParams.set("at", String(position));
    url.searchParams.delete("page");
    history.replaceState(null, "", url);
    refresh(true);
  }

  function gotoPage(state, page) {
    state.page = String(page);
    state.at = null;
    const url = new URL(location.href);
    url.searchParams.delete("at");
    url.searchParams.set("page", String(page));
    history.replaceState(null, "", url);
    refresh(true);
  }

  function fact(k, ...v) { return el("div", { className: "fact" }, el("div", { className: "k" }, k), el("div", { className: "v" }, ...v)); }

  function factsPanel(data, r) {
    const facts = [fact("Workflow", txt(r.workflow)), fact("Created", when(r.created, data.now)), fact("Updated", when(r.updated, data.now)),
      fact("Owner", r.owner ? el("span", { className: "mono", title: r.owner }, textNodes(r.owner.split("|")[0] + (r.owner.split("|")[3] ? " pid " + r.owner.split("|")[3] : ""), false))
        : el("span", { className: "faint" }, UNFINISHED.has(r.state) && r.state !== "blocked" ? "none: the next worker that knows it takes it" : "—"))];
    if (r.waits.length) facts.push(fact("Waiting for", waitsText(r.waits)));
    if (r.wake_at !== null && UNFINISHED.has(r.state)) facts.push(fact(r.state === "waiting" ? "Times out" : "Wakes at", when(r.wake_at, data.now), " ", el("span", { className: "muted" }, "(" + fmtAgo(r.wake_at, data.now) + ")")));
    if (r.parent) facts.push(fact("Parent", runLink(r.parent)));
    if (r.forked_from) facts.push(fact("Forked from", runLink(r.forked_from)));
    if (r.resumes) facts.push(fact("Resumes", r.resumes + " without progress"));
    if (r.unserved) facts.push(fact("Note", el("span", { className: "note" }, txt(r.unserved))));
    const children = data.children;
    if (children && children.runs.length) {
      facts.push(fact("Children", el("div", { className: "links" }, children.runs.map((c) => el("span", {}, runLink(c.id || c.run_id), " ", pill(c.state))),
        el("a", { href: "/?parent=" + encodeURIComponent(r.run_id) }, children.more ? "all children…" : "as a list"))));
    }
    return el("div", { className: "panel" }, el("div", { className: "panel-body facts" }, facts));
  }

  function signalsList(data, fetchValue) {
    if (!data.signals.length) return el("span", { className: "faint" }, "none queued");
    return el("div", {}, data.signals.map((s) => el("div", { className: "try" },
      el("code", {}, textNodes(s.name, false)), " sent " + fmtTime(s.sent) + ": ", oneLine(s.payload, fetchValue("signal", s.id)))));
  }

  // ---- the timeline ----------------------------------------------------------------------------

  function timelinePanel(data, id, state, fetchValue) {
    const head = el("div", { className: "panel-head" }, el("h2", {}, "Timeline"),
      el("span", { className: "muted" }, fmtInt(data.items) + (data.items === 1 ? " item" : " items") + (data.pages > 1 ? " · page " + (data.page + 1) + " of " + fmtInt(data.pages) : "")),
      el("span", { className: "spacer" }));
    if (data.first_error !== null && data.first_error !== data.page) head.append(el("button", { type: "button", className: "link", on: { click: () => gotoPage(state, data.first_error) } }, "first error"));
    if (data.pages > 1) {
      head.append(el("span", { className: "row" },
        el("button", { type: "button", disabled: data.page === 0, on: { click: () => gotoPage(state, 0) } }, "« First"),
        el("button", { type: "button", disabled: data.page === 0, on: { click: () => gotoPage(state, data.page - 1) } }, "‹ Earlier"),
        el("button", { type: "button", disabled: data.page >= data.pages - 1, on: { click: () => gotoPage(state, data.page + 1) } }, "Later ›"),
        el("button", { type: "button", disabled: data.page >= data.pages - 1, on: { click: () => gotoPage(state, data.pages - 1) } }, "Last »")));
    }
    if (!data.timeline.length) return el("div", { className: "panel" }, head, el("div", { className: "empty" },
      data.run.purged ? "The run was purged: its journal is no longer kept." : "The journal is empty: the run has not taken a step yet."));
    const span = Math.max(1e-6, (data.ended || data.now) - (data.started || data.now));
    const rows = data.timeline.map((it) => timelineRow(it, data, span, fetchValue, state));
    const table = el("table", { className: "tl" },
      el("thead", {}, el("tr", {}, ["#", "What", "Name", "Started", "Took", "Tries", "When", "Outcome"].map((h, i) => el("th", { className: i === 4 || i === 5 ? "num" : "" }, h)))),
      el("tbody", {}, rows));
    return el("div", { className: "panel" }, head, table);
  }

  function timelineRow(it, data, span, fetchValue, state) {
    const took = it.ended - it.started;
    const bar = el("div", { className: "bar" });
    const mark = el("span", { className: it.error || it.status === "error" ? "err" : it.kind === "sleep" || it.kind === "wait" ? "park" : "" });
    mark.style.left = (100 * Math.max(0, it.started - data.started) / span).toFixed(2) + "%";
    mark.style.width = Math.max(0.4, 100 * took / span).toFixed(2) + "%";
    bar.append(mark);
    const row = el("tr", { className: state.hit !== null && String(it.position) === state.hit ? "hit" : "" },
      el("td", { className: "pos" }, String(it.position)),
      el("td", {}, el("span", { className: "kind k-" + it.kind }, it.kind)),
      el("td", {}, txt(it.name)),
      el("td", { className: "nowrap" }, when(it.started, data.now)),
      el("td", { className: "num nowrap" }, fmtSpan(took)),
      el("td", { className: "num" }, it.attempts !== undefined ? String(it.attempts) : ""),
      el("td", { className: "bar-cell" }, bar),
      el("td", { className: "outcome" }, outcomeOf(it, data.now, fetchValue)));
    return row;
  }

  function outcomeOf(it, now, fetchValue) {
    const errorFetch = (seq) => fetchValue("entry_traceback", seq);
    switch (it.kind) {
      case "do": {
        const tries = it.tries.map((t, i) => el("div", { className: "try" }, "try " + (i + 1) + " failed",
          t.error && t.error.next_at ? " (next at " + fmtTime(t.error.next_at) + ")" : "", ": ", errorBlock(t.error, errorFetch(t.seq), fetchValue("entry", t.seq))));
        if (it.error) return [errorBlock(it.error, errorFetch(it.error_seq), fetchValue("entry", it.error_seq)), tries];
        if (it.result) return [oneLine(it.result, fetchValue("entry", it.seqs[it.seqs.length - 1])), tries];
        return [el("span", { className: "muted" }, "retrying…"), tries];
      }
      case "sleep":
        return [typeof it.until === "number" ? "until " + fmtTime(it.until) + " (" + fmtAgo(it.until, now) + ")" : "", it.woke ? " · won its Any" : ""];
      case "wait": {
        const timeout = typeof it.timeout === "number" ? el("div", { className: "try" }, "timeout " + fmtTime(it.timeout)) : null;
        if (it.status === "timeout") return [el("span", { className: "bad" }, "timed out"), timeout];
        if (it.payload) return ["signal taken: ", oneLine(it.payload, fetchValue("entry", it.seqs[it.seqs.length - 1]), 70), timeout];
        return [el("span", { className: "muted" }, "waiting for the signal"), timeout];
      }
      case "version":
        return ["took branch ", el("strong", {}, txt(JSON.stringify(it.version)))];
      case "cancel":
        return [el("span", { className: "bad" }, it.status === "deadline" ? "DeadlineExceeded raised here" : "Cancelled raised here")];
      case "deadline":
        return ["run must end by " + fmtTime(it.until)];
      case "group": {  // where an All or Any of 2+ members began
        const n = Number(it.members);
        const words = txt(it.group + " of " + it.members);
        return Number.isInteger(n) && n > 1 ? [words, el("span", { className: "muted" }, " (positions " + it.position + " to " + (it.position + n - 1) + ")")] : [words];
      }
      case "child": {
        const child = it.child ? ["child ", runLink(it.child), " "] : [];
        if (it.error) return [child, errorBlock(it.error, errorFetch(it.error_seq), fetchValue("entry", it.error_seq))];
        if (it.result) return [child, oneLine(it.result, fetchValue("entry", it.seqs[it.seqs.length - 1]), 60)];
        return [child, el("span", { className: "muted" }, "running")];
      }
      default:
        return [el("span", { className: "muted" }, txt(it.entry_kind + " " + it.status + " ")), it.value ? oneLine(it.value, fetchValue("entry", it.seq)) : null];
    }
  }

  // ---- actions: a form, then a confirmation, then the POST ---------------------------------

  function actionsPanel(r) {
    const buttons = [];
    if (r.state !== "blocked") buttons.push(el("button", { type: "button", on: { click: () => signalDialog(r) } }, "Send signal…"));
    buttons.push(el("button", { type: "button", on: { click: () => simpleDialog(r, "cancel") } }, "Cancel…"));
    buttons.push(el("button", { type: "button", className: "danger", on: { click: () => simpleDialog(r, "terminate") } }, "Terminate…"));
    if (r.state === "blocked") buttons.push(el("button", { type: "button", on: { click: () => simpleDialog(r, "retry") } }, "Retry on a worker…"));
    return el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, "Actions"),
      el("span", { className: "muted" }, "each asks for confirmation"), el("div", { className: "actions" }, buttons)));
  }

  const EXPLAIN = {
    cancel: "Cancelled is raised inside the workflow at its current yield, so it can compensate. A blocked run takes it when code that replays it runs it again.",
    terminate: "The run ends now as cancelled, running no workflow code; a step still running somewhere finishes, but its result is refused.",
    retry: "The run is handed back to the workers as pending: a live worker that knows its workflow replays it with the code it runs now, and blocks it again if that code still disagrees with the journal. This page has no workflow code of its own.",
  };

  // A dialog with a form step and a confirmation step; send() does the POST.
  function dialog(title, formNodes, review, send) {
    const error = el("div", { className: "form-error" });
    const body = el("div", { className: "d-body" }, formNodes, error);
    const back = el("button", { type: "button" }, "Back");
    const next = el("button", { type: "button", className: "primary" }, "Review…");
    const foot = el("div", { className: "d-foot" }, el("button", { type: "button", on: { click: () => box.close() } }, "Close"), next);
    const box = el("dialog", {}, el("div", { className: "d-head" }, title), body, foot);
    box.addEventListener("close", () => box.remove());
    let confirming = false;
    next.addEventListener("click", async () => {
      error.replaceChildren();
      if (!confirming) {
        let summary;
        try { summary = review(); } catch (err) { error.replaceChildren(...textNodes(err.message, false)); return; }
        confirming = true;
        body.replaceChildren(el("div", { className: "confirm-box" }, summary), error);
        next.textContent = "Confirm";
        foot.insertBefore(back, next);
        back.onclick = () => { confirming = false; body.replaceChildren(formNodes, error); next.textContent = "Review…"; back.remove(); };
        return;
      }
      next.disabled = true;
      try {
        const done = await send();
        box.close();
        toast(done.message, false);
        refresh(true);
      } catch (err) {
        next.disabled = false;
        error.replaceChildren(...textNodes(err.message, false));
      }
    });
    document.body.append(box);
    box.showModal();
  }

  function signalDialog(r) {
    const name = el("input", { type: "text", placeholder: "signal name", value: r.waits.length && r.waits[0].signal !== undefined ? r.waits[0].signal : "" });
    const payload = el("textarea", { placeholder: "null", spellcheck: false });
    const form = el("div", {}, el("label", {}, "Signal name", name), el("label", {}, "Payload (JSON; empty sends null)", payload));
    dialog(el("span", {}, "Send a signal to ", el("span", { className: "runid" }, textNodes(r.run_id, false))), form, () => {
      if (!name.value) throw new Error("give the signal's name");
      if (payload.value.trim()) JSON.parse(payload.value);  // the server checks it again, exactly
      return el("div", {}, "Queue signal ", el("code", {}, textNodes(name.value, false)), " for run ",
        el("code", {}, textNodes(r.run_id, false)), " with payload:",
        el("pre", { className: "value" }, textNodes(payload.value.trim() || "null", true)));
    }, () => postJSON("/api/signal", { run_id: r.run_id, name: name.value, payload: payload.value }));
  }

  function simpleDialog(r, action) {
    const reason = el("input", { type: "text", placeholder: "terminated from replaygen ui" });
    const notes = { retry: r.crash_loop ? " It was blocked for a crash loop: a worker that takes it may crash again (it is blocked again after the same number of resumes)." : "" };
    const form = el("div", {}, el("p", {}, EXPLAIN[action] + (notes[action] || "")),
      action === "terminate" ? el("label", {}, "Reason (stored as the run's error)", reason) : null);
    const verb = { cancel: "Cancel", terminate: "Terminate", retry: "Retry" }[action];
    dialog(el("span", {}, verb + " run ", el("span", { className: "runid" }, textNodes(r.run_id, false))), form,
      () => el("div", {}, verb + " run ", el("code", {}, textNodes(r.run_id, false)), " (" + r.state + ")? ",
        action === "terminate" ? "This cannot be undone." : ""),
      () => postJSON("/api/" + action, action === "terminate" ? { run_id: r.run_id, reason: reason.value } : { run_id: r.run_id }));
  }

  // ---- workflows and workers ----------------------------------------------------------------------

  function workflowsPage() {
    refresh = (force) => load(() => getJSON("/api/overview"), drawWorkflows, force);
    refresh(true).then(loadCensus);
  }

  function drawWorkflows(data) {
    const shownStates = data.purged ? STATES.concat([PURGED]) : STATES;  // tombstones: their own column
    const head = el("tr", {}, el("th", {}, "Workflow"), shownStates.map((s) => el("th", { className: "num" }, s)), el("th", { className: "num", title: "runs, tombstones of purged runs left out" }, "total"), el("th", {}, "Live worker"));
    const rows = data.workflows.map((w) => el("tr", {},
      el("td", {}, el("a", { href: "/?workflow=" + encodeURIComponent(w.workflow) }, textNodes(w.workflow, false))),
      shownStates.map((s) => el("td", { className: "num" }, w.counts[s]
        ? el("a", { href: "/?workflow=" + encodeURIComponent(w.workflow) + "&state=" + s }, fmtInt(w.counts[s])) : el("span", { className: "faint" }, "·"))),
      el("td", { className: "num" }, fmtInt(STATES.reduce((a, s) => a + (w.counts[s] || 0), 0))),
      el("td", {}, w.served ? el("span", { className: "pill s-completed" }, "serving") : el("span", { className: "note" }, data.workers_known ? "none" : "unknown"))));
    const workers = data.workers.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Worker", "Host", "Pid", "Workflows it serves", "Lease until"].map((h) => el("th", {}, h)))),
      el("tbody", {}, data.workers.map((w) => el("tr", {},
        el("td", { className: "runid" }, textNodes(w.owner.split("|").pop(), false)), el("td", {}, txt(w.host)), el("td", {}, txt(w.pid)),
        el("td", {}, w.workflows === null ? el("span", { className: "faint" }, "not advertised (an older replaygen)") : w.workflows.map((n, i) => [i ? ", " : "", txt(n)])),
        el("td", { className: "nowrap" }, w.lease_until ? [fmtTime(w.lease_until), el("span", { className: "muted" }, " (" + fmtAgo(w.lease_until, data.now) + ")")] : el("span", { className: "faint" }, "live"))))))
      : el("div", { className: "empty" }, data.workers_known ? "No worker is live." : "This store cannot tell which workers are live.");
    document.getElementById("app").replaceChildren(
      el("div", { className: "page-head" }, el("h1", {}, "Workflows & workers"), el("span", { className: "updated" }, "updated " + fmtTime(data.now))),
      el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, "Runs per workflow")),
        data.workflows.length ? el("table", {}, el("thead", {}, head), el("tbody", {}, rows)) : el("div", { className: "empty" }, "No runs yet.")),
      el("div", { className: "panel" }, el("div", { className: "panel-head" }, el("h2", {}, "Live workers"), el("span", { className: "muted" }, fmtInt(data.workers.length))), workers),
      el("div", { className: "panel", id: "census" }, el("div", { className: "panel-head" }, el("h2", {}, "Version census"),
        el("span", { className: "muted" }, "unfinished runs per Version branch")), el("div", { className: "empty" }, "Counting…")));
    if (censusData) drawCensus(censusData);
  }

  let censusData = null;
  async function loadCensus() {
    try { censusData = await getJSON("/api/versions"); drawCensus(censusData); } catch (err) {
      const box = document.getElementById("census");
      if (box) box.lastChild.replaceChildren(...textNodes(err.message, false));
    }
  }

  function drawCensus(data) {
    const box = document.getElementById("census");
    if (!box) return;
    const rows = data.changes.flatMap((c) => c.branches.map((b, i) => el("tr", {},
      el("td", {}, i === 0 ? el("code", {}, textNodes(c.change, false)) : ""),
      el("td", {}, b.branch === null ? el("span", { className: "muted" }, "no marker yet") : String(b.branch)),
      el("td", { className: "num" }, fmtInt(b.runs)))));
    box.lastChild.replaceWith(rows.length
      ? el("div", {}, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Change id"), el("th", {}, "Branch"), el("th", { className: "num" }, "Unfinished runs"))), el("tbody", {}, rows)),
        el("div", { className: "pager" }, "counted " + fmtTime(data.at) + " in " + fmtSpan(data.took) + "; recounted at most every " + data.ttl + " s. A branch no unfinished run takes can be deleted from the code."))
      : el("div", { className: "empty" }, "No unfinished run has a Version marker."));
  }

  // ---- start ------------------------------------------------------------------------------------------

  function start() {
    document.getElementById("store").replaceChildren(...textNodes(STORE, false));
    document.getElementById("store").title = STORE;
    const mode = document.getElementById("mode");
    mode.textContent = ACTIONS ? "actions on" : "read-only";
    mode.className = "mode" + (ACTIONS ? " on" : "");
    const page = location.pathname === "/run" ? "run" : location.pathname === "/workflows" ? "workflows" : "runs";
    for (const a of document.querySelectorAll("nav a")) if (a.dataset.page === page || (page === "run" && a.dataset.page === "runs")) a.classList.add("here");
    const box = document.getElementById("live");
    box.checked = localStorage.getItem("rg-live") !== "off";
    box.addEventListener("change", () => { localStorage.setItem("rg-live", box.checked ? "on" : "off"); if (box.checked) every(); });
    ({ run: runPage, workflows: workflowsPage, runs: runsPage })[page]();
    setInterval(every, REFRESH_MS);
  }

  start();
})();
