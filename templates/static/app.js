// furoshiki chat page. No build step and no network beyond this server:
// marked (markdown), DOMPurify (sanitising) and highlight.js are vendored.
"use strict";

(() => {
  const STORE = "furoshiki.v1.";
  const $ = (id) => document.getElementById(id);
  const page = JSON.parse(document.body.dataset.config || "{}");
  const strings = window.FUROSHIKI_I18N;

  // ---------------------------------------------------------------- storage
  const load = (key, fallback) => {
    try {
      const raw = localStorage.getItem(STORE + key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (_) {
      return fallback;
    }
  };
  const save = (key, value) => localStorage.setItem(STORE + key, JSON.stringify(value));

  const defaults = page.defaults || {};
  const settings = Object.assign(
    { systemPrompt: defaults.system_prompt || "", temperature: defaults.temperature ?? 0.7,
      maxTokens: defaults.max_tokens ?? 1024, apiKey: "" },
    load("settings", {}),
  );
  let conversations = load("conversations", []);
  let currentId = load("current", null);
  let lang = load("lang", (navigator.language || "en").toLowerCase().startsWith("ja") ? "ja" : "en");
  let theme = load("theme", matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  let controller = null; // AbortController of the generation in flight
  let props = null;

  const t = (key) => (strings[lang] && strings[lang][key]) || strings.en[key] || key;
  const current = () => conversations.find((c) => c.id === currentId);
  const persist = () => { save("conversations", conversations); save("current", currentId); };

  // ---------------------------------------------------------------- i18n and theme
  function applyLanguage() {
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    document.querySelectorAll("[data-i18n-title]").forEach((el) => { el.title = t(el.dataset.i18nTitle); });
    $("lang-toggle").textContent = t("otherLanguage");
    showModel();
    renderList();
    renderMessages();
  }

  function applyTheme() {
    document.documentElement.dataset.theme = theme;
    $("hljs-light").disabled = theme === "dark";
    $("hljs-dark").disabled = theme !== "dark";
  }

  // ---------------------------------------------------------------- markdown
  function renderMarkdown(text) {
    const html = window.marked ? window.marked.parse(text, { gfm: true, breaks: true }) : escapeHtml(text);
    const clean = window.DOMPurify ? window.DOMPurify.sanitize(html) : escapeHtml(text);
    const box = document.createElement("div");
    box.className = "markdown";
    box.innerHTML = clean;
    if (window.hljs) box.querySelectorAll("pre code").forEach((el) => window.hljs.highlightElement(el));
    box.querySelectorAll("a").forEach((a) => { a.target = "_blank"; a.rel = "noopener noreferrer"; });
    return box;
  }
  const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // ---------------------------------------------------------------- rendering
  function renderList() {
    const list = $("conversations");
    list.replaceChildren();
    [...conversations].sort((a, b) => b.updated - a.updated).forEach((c) => {
      const li = document.createElement("li");
      li.className = c.id === currentId ? "active" : "";
      const open = document.createElement("button");
      open.className = "conv-title";
      open.textContent = c.title || t("untitled");
      open.onclick = () => { if (!controller) { currentId = c.id; persist(); renderList(); renderMessages(); closeSidebar(); } };
      const del = document.createElement("button");
      del.className = "ghost icon conv-delete";
      del.title = t("deleteChat");
      del.textContent = "×";
      del.onclick = () => deleteConversation(c.id);
      li.append(open, del);
      list.append(li);
    });
  }

  function messageNode(msg, index, conv) {
    const node = document.createElement("article");
    node.className = `msg ${msg.role}`;
    node.dataset.index = index;
    const body = document.createElement("div");
    body.className = "body";
    if (msg.role === "assistant") body.append(renderMarkdown(msg.content || ""));
    else body.textContent = msg.content;
    node.append(body);
    const meta = document.createElement("div");
    meta.className = "meta";
    if (msg.stopped) meta.append(tag(t("stopped")));
    if (msg.error) { node.classList.add("error"); }
    if (msg.tps) meta.append(tag(`${msg.tps} ${t("tokensPerSecond")}`));
    if (msg.role === "assistant" && index === conv.messages.length - 1 && !controller) {
      const again = document.createElement("button");
      again.className = "ghost small regenerate";
      again.textContent = t("regenerate");
      again.onclick = regenerate;
      meta.append(again);
    }
    if (msg.role === "assistant" && msg.content) {
      const copy = document.createElement("button");
      copy.className = "ghost small";
      copy.textContent = t("copy");
      copy.onclick = async () => {
        try { await navigator.clipboard.writeText(msg.content); copy.textContent = t("copied"); } catch (_) { /* no clipboard */ }
      };
      meta.append(copy);
    }
    node.append(meta);
    return node;
  }
  const tag = (text) => Object.assign(document.createElement("span"), { className: "tag", textContent: text });

  function renderMessages() {
    const box = $("messages");
    const conv = current();
    box.querySelectorAll(".msg").forEach((n) => n.remove());
    $("empty").hidden = !!(conv && conv.messages.length);
    if (!conv) return;
    conv.messages.forEach((m, i) => box.append(messageNode(m, i, conv)));
    box.scrollTop = box.scrollHeight;
  }

  function showModel() {
    if (!props) return;
    $("model-name").textContent = page.title || props.model;
    $("model-meta").textContent = `${props.model} · ${t("context")} ${props.n_ctx.toLocaleString()}`;
    $("page-title").textContent = page.title || props.model;
  }

  function banner(text) {
    $("banner").textContent = text || "";
    $("banner").hidden = !text;
  }

  // ---------------------------------------------------------------- server
  function headers() {
    const h = { "Content-Type": "application/json" };
    if (settings.apiKey) h.Authorization = `Bearer ${settings.apiKey}`;
    return h;
  }

  async function fetchProps(attempt = 0) {
    try {
      const res = await fetch("/props", { headers: headers() });
      if (res.status === 401) { banner(t("needKey")); $("api-key-row").hidden = false; return; }
      if (res.status === 503) { banner(t("modelLoading")); setTimeout(() => fetchProps(attempt + 1), 1000); return; }
      props = await res.json();
      banner("");
      showModel();
    } catch (_) {
      banner(t("offline"));
      if (attempt < 30) setTimeout(() => fetchProps(attempt + 1), 2000);
    }
  }

  function newConversation() {
    const conv = { id: `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`,
      title: "", messages: [], updated: Date.now() };
    conversations.push(conv);
    currentId = conv.id;
    persist();
    return conv;
  }

  function deleteConversation(id) {
    if (controller && id === currentId) return;
    conversations = conversations.filter((c) => c.id !== id);
    if (currentId === id) currentId = conversations.length ? conversations[conversations.length - 1].id : null;
    persist();
    renderList();
    renderMessages();
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    document.body.classList.toggle("busy", busy);
  }

  async function generate(conv) {
    const assistant = { role: "assistant", content: "" };
    conv.messages.push(assistant);
    conv.updated = Date.now();
    const history = conv.messages.slice(0, -1).filter((m) => !m.error).map(({ role, content }) => ({ role, content }));
    if (settings.systemPrompt.trim()) history.unshift({ role: "system", content: settings.systemPrompt });
    controller = new AbortController();
    setBusy(true);
    renderMessages();
    const node = $("messages").lastElementChild;
    const body = node.querySelector(".body");
    let pending = false;
    const paint = () => {
      pending = false;
      body.replaceChildren(renderMarkdown(assistant.content));
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
    };
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ messages: history, stream: true, stream_options: { include_usage: true },
          temperature: Number(settings.temperature), max_tokens: Number(settings.maxTokens) }),
      });
      if (!res.ok) {
        const err = await res.json().catch(() => ({}));
        if (res.status === 401) $("api-key-row").hidden = false;
        throw new Error((err.error && err.error.message) || `HTTP ${res.status}`);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (!event.startsWith("data: ")) continue;
          const data = event.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            assistant.content += delta.content;
            if (!pending) { pending = true; requestAnimationFrame(paint); }
          }
          if (chunk.timings && chunk.timings.predicted_per_second) {
            assistant.tps = Math.round(chunk.timings.predicted_per_second * 10) / 10;
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") assistant.stopped = true;
      else { assistant.error = true; assistant.content += `\n\n**${escapeHtml(String(err.message || err))}**`; }
    } finally {
      controller = null;
      setBusy(false);
      if (!conv.title) conv.title = (conv.messages.find((m) => m.role === "user") || {}).content.slice(0, 40);
      conv.updated = Date.now();
      persist();
      renderList();
      renderMessages();
    }
  }

  function send() {
    const text = $("input").value.trim();
    if (!text || controller) return;
    const conv = current() || newConversation();
    conv.messages.push({ role: "user", content: text });
    $("input").value = "";
    autosize();
    persist();
    renderList();
    generate(conv);
  }

  function regenerate() {
    const conv = current();
    if (!conv || controller) return;
    while (conv.messages.length && conv.messages[conv.messages.length - 1].role === "assistant") conv.messages.pop();
    if (conv.messages.length) generate(conv);
  }

  // ---------------------------------------------------------------- input
  function autosize() {
    const el = $("input");
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, 200)}px`;
  }

  function onKeyDown(e) {
    // While an IME is composing (Japanese kana→kanji), Enter confirms the
    // conversion and must never send. keyCode 229 covers Safari, which ends
    // composition before the keydown that confirms it.
    if (e.key !== "Enter" || e.shiftKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    send();
  }

  const closeSidebar = () => { document.body.classList.remove("sidebar-open"); $("scrim").hidden = true; };

  function bind() {
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("input").addEventListener("keydown", onKeyDown);
    $("input").addEventListener("input", autosize);
    $("stop").onclick = () => { if (controller) controller.abort(); };
    $("new-chat").onclick = () => { if (!controller) { newConversation(); renderList(); renderMessages(); closeSidebar(); $("input").focus(); } };
    $("lang-toggle").onclick = () => { lang = lang === "ja" ? "en" : "ja"; save("lang", lang); applyLanguage(); };
    $("theme-toggle").onclick = () => { theme = theme === "dark" ? "light" : "dark"; save("theme", theme); applyTheme(); };
    $("sidebar-toggle").onclick = () => { document.body.classList.add("sidebar-open"); $("scrim").hidden = false; };
    $("scrim").onclick = closeSidebar;
    $("settings-open").onclick = () => {
      $("system-prompt").value = settings.systemPrompt;
      $("temperature").value = settings.temperature;
      $("temperature-value").textContent = settings.temperature;
      $("max-tokens").value = settings.maxTokens;
      $("api-key").value = settings.apiKey;
      $("settings").showModal();
    };
    $("temperature").oninput = () => { $("temperature-value").textContent = $("temperature").value; };
    $("settings").addEventListener("close", () => {
      settings.systemPrompt = $("system-prompt").value;
      settings.temperature = Number($("temperature").value);
      const max = parseInt($("max-tokens").value, 10);
      settings.maxTokens = Number.isFinite(max) && max > 0 ? max : settings.maxTokens;
      const keyChanged = settings.apiKey !== $("api-key").value;
      settings.apiKey = $("api-key").value;
      save("settings", settings);
      if (keyChanged) fetchProps();
    });
  }

  if (page.needsKey) $("api-key-row").hidden = false;
  if (page.title) document.title = page.title;
  if (!current()) currentId = null;
  bind();
  applyTheme();
  applyLanguage();
  fetchProps();
})();
