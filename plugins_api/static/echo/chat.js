// Echo's chat page: one websocket (/ws/chat/) for the chat and the provider list,
// /api/conversations/ for past conversations (each at its own URL, /chat/c/<id>,
// renamed and searched there); answers shown as sanitized Markdown.
// Plain JavaScript, no build step; marked, DOMPurify and highlight.js are vendored
// (echo/vendor/) and loaded before this file.
"use strict";

(() => {
  const HEALTH_REFRESH_MS = 30000;
  // Reconnecting: the first retry after about half a second, each next one twice as
  // late up to half a minute, each delay moved by up to a fifth either way so that
  // many pages cut off together do not all come back in the same instant.
  const RETRY_FIRST_MS = 500;
  const RETRY_MAX_MS = 30000;
  const RETRY_JITTER = 0.2;
  const OFFLINE_NOTICE = "Connection lost; reconnecting…";
  const SEARCH_DELAY_MS = 250; // typing in the search box asks the server once it pauses
  // What an answer with no text says instead of an empty bubble, by how it ended.
  const EMPTY_ANSWER = {
    cancelled: "Stopped before any answer",
    interrupted: "Interrupted before any answer",
    failed: "No answer",
  };
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  // The server's limits on one question (ECHO_WS_MAX_MESSAGE_CHARS, ECHO_WS_MAX_FRAME_BYTES).
  const MAX_MESSAGE_CHARS = Number(app.dataset.maxMessageChars) || Infinity;
  const MAX_FRAME_BYTES = Number(app.dataset.maxFrameBytes) || Infinity;
  const ui = {
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    search: $("search"),
    conversations: $("conversations"),
    conversationsEmpty: $("conversations-empty"),
    more: $("more-conversations"),
    notice: $("notice"),
    noticeText: $("notice-text"),
    title: $("title"),
    provider: $("provider"),
    model: $("model"),
    health: $("health"),
    messages: $("messages"),
    empty: $("empty"),
    status: $("status"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
  };
  const state = {
    socket: null, // the websocket, open or still connecting
    offline: false, // the connection was lost and is not back yet
    retryDelay: RETRY_FIRST_MS, // the next reconnection's delay, before jitter
    retryTimer: null,
    probing: false, // a reconnection's probe request is under way
    leaving: false, // the page is being left: its sockets close on purpose
    providers: JSON.parse($("initial-providers").textContent),
    wantedProvider: null, // what the person picked, kept while it is briefly missing
    wantedModel: null,
    conversation: null,
    pending: null, // the answer's element, sent but not started
    answering: null, // the answer's element, streaming
    noticeKind: null, // what the notice above the messages is about ("picker", "missing")
    search: "", // the conversation list's search text, as sent
    searchTimer: null,
    listRequest: 0, // the latest list request: older answers are dropped
    listNext: null, // the list's next page, if any
    renaming: false, // a title is being edited: the list is not redrawn meanwhile
    listStale: false, // the list changed while a title was edited
    opening: 0, // the latest conversation asked for: older answers are dropped
  };

  // --- the websocket ---------------------------------------------------

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${app.dataset.socketPath}`);
    state.socket = socket;
    let heard = false;
    socket.addEventListener("open", updateControls);
    socket.addEventListener("message", (event) => {
      // The server speaks first (the provider list): only then is the connection a success.
      if (!heard) {
        heard = true;
        connectionRestored();
      }
      handle(JSON.parse(event.data));
    });
    socket.addEventListener("close", () => {
      if (state.socket !== socket) return;
      state.socket = null;
      const unfinished = state.answering || state.pending;
      if (unfinished) {
        state.answering = state.pending = null;
        finishAnswer(unfinished, "failed", "The connection dropped.");
      }
      if (!state.leaving) connectionLost();
      updateControls();
    });
  }

  function connectionLost() {
    state.offline = true;
    setStatus(OFFLINE_NOTICE);
    renderHealth(currentProvider());
    scheduleReconnect();
  }

  function connectionRestored() {
    state.retryDelay = RETRY_FIRST_MS;
    if (!state.offline) return;
    state.offline = false;
    if (ui.status.textContent === OFFLINE_NOTICE) setStatus("");
    // The provider list (picker and health) follows on the socket; conversations are asked for.
    renderHealth(currentProvider());
    loadConversations();
  }

  function scheduleReconnect() {
    if (state.retryTimer !== null) return;
    const spread = 1 - RETRY_JITTER + 2 * RETRY_JITTER * Math.random();
    state.retryTimer = setTimeout(reconnect, state.retryDelay * spread);
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
  }

  // One reconnection attempt: one plain request first, which also tells an expired
  // login (a refused handshake looks like any other close); the socket only once
  // the server answers. While it is away each attempt costs one failed request.
  async function reconnect() {
    state.retryTimer = null;
    if (state.socket || state.probing || state.leaving) return;
    state.probing = true;
    let reachable = false;
    try {
      const response = await fetch("/api/conversations/", {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (response.status === 401 || response.status === 403) return toLogin();
      // A proxy's "bad gateway" or "unavailable" means Echo itself is still away.
      reachable = ![502, 503, 504].includes(response.status);
    } catch (error) {
      reachable = false;
    } finally {
      state.probing = false;
    }
    if (reachable) connect();
    else scheduleReconnect();
  }

  function reconnectNow() {
    if (state.socket || state.leaving) return;
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.retryDelay = RETRY_FIRST_MS;
    reconnect();
  }

  function toLogin() {
    state.leaving = true;
    location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname)}`);
  }

  function sendFrame(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  function handle(frame) {
    switch (frame.type) {
      case "providers":
        state.providers = frame.providers;
        renderProviders();
        break;
      case "start":
        onStart(frame);
        break;
      case "chunk":
        if (state.answering) appendText(state.answering, String(frame.content ?? ""));
        break;
      case "done":
        onDone(frame);
        break;
      case "error":
        onError(frame);
        break;
    }
  }

  function onStart(frame) {
    const element = state.pending;
    state.pending = null;
    if (!element) return;
    state.answering = element;
    element.dataset.messageId = frame.message_id;
    setMeta(element, who(frame.provider, frame.model));
    if (state.conversation !== frame.conversation) {
      state.conversation = frame.conversation;
      ui.title.textContent = frame.title || "Conversation";
      // The new conversation takes the place of "New chat" in the history.
      setUrl(frame.conversation, "replace");
      loadConversations();
    }
  }

  function onDone(frame) {
    const element = state.answering;
    state.answering = null;
    if (element) {
      const usage = frame.usage || {};
      const meta = answerDetails({
        provider: frame.provider,
        model: frame.model,
        status: frame.status,
        promptTokens: usage.prompt_tokens,
        completionTokens: usage.completion_tokens,
        firstChunkMs: frame.first_chunk_ms,
        latencyMs: frame.latency_ms,
      });
      finishAnswer(element, frame.status, meta);
      showFailover(element, frame.fallback, frame.provider);
    }
    updateControls();
    loadConversations();
  }

  function onError(frame) {
    const message = frame.error ? frame.error.message : "Something went wrong.";
    const element = frame.message_id ? state.answering : state.pending;
    if (element && (!frame.message_id || element.dataset.messageId === String(frame.message_id))) {
      if (element === state.answering) state.answering = null;
      if (element === state.pending) state.pending = null;
      const field = frame.error && frame.error.field ? ` (${frame.error.field})` : "";
      finishAnswer(element, "failed", `${message}${field}`);
      updateControls();
      if (frame.message_id) loadConversations();
      return;
    }
    setStatus(message);
  }

  // --- messages --------------------------------------------------------

  function who(provider, model) {
    return model ? `${provider} · ${model}` : provider || "";
  }

  function milliseconds(value) {
    // A number and its unit never part at the end of a line.
    return value >= 10000 ? `${(value / 1000).toFixed(1)}\u00a0s` : `${Math.round(value)}\u00a0ms`;
  }

  // An answer's line under its bubble, the same live and reopened: who wrote it,
  // its tokens, the time to its first word and to its end, and how it ended.
  function answerDetails(answer) {
    const parts = [who(answer.provider, answer.model)];
    if (answer.promptTokens != null || answer.completionTokens != null) {
      const tokens = (answer.promptTokens || 0) + (answer.completionTokens || 0);
      parts.push(`${tokens}\u00a0tokens`);
    }
    if (answer.firstChunkMs != null) parts.push(`first word ${milliseconds(answer.firstChunkMs)}`);
    if (answer.latencyMs != null) parts.push(`total ${milliseconds(answer.latencyMs)}`);
    if (answer.status === "cancelled") parts.push("stopped");
    else if (answer.status && answer.status !== "complete") parts.push(answer.status);
    if (answer.error) parts.push(answer.error);
    return parts.filter(Boolean).join(" · ");
  }

  // Say on the answer that it came from another provider than the one first tried.
  function showFailover(element, fallback, answeredBy) {
    if (!Array.isArray(fallback) || !fallback.length) return;
    const failed = fallback.map((step) => {
      const name = step.model ? `${step.provider} (${step.model})` : step.provider;
      return `${name} failed (${String(step.error || "error").replace(/_/g, " ")})`;
    });
    const notice = document.createElement("div");
    notice.className = "failover";
    notice.textContent = `${failed.join("; ")}; answered by ${answeredBy}`;
    element.querySelector(".bubble").before(notice);
  }

  // Put a label in the bubble of an answer that ended with no text at all.
  function labelEmptyAnswer(element, status) {
    const bubble = element.querySelector(".bubble");
    const label = EMPTY_ANSWER[status];
    if (!label || (answerTexts.get(element) || "") !== "") return;
    bubble.classList.remove("markdown");
    bubble.classList.add("empty-answer");
    bubble.textContent = label;
  }

  // A person's message stays plain text; an answer is Markdown.
  function addMessage(role, text, meta, status) {
    ui.empty.hidden = true;
    const element = document.createElement("div");
    element.className = `message ${role}`;
    if (status && status !== "complete") element.classList.add(status);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    if (role === "assistant") {
      if (markdown) bubble.classList.add("markdown"); // else plain text, its lines kept
      answerTexts.set(element, text);
      renderMarkdown(bubble, text);
    } else {
      bubble.textContent = text;
    }
    const line = document.createElement("div");
    line.className = "meta";
    line.textContent = meta || "";
    element.append(bubble, line);
    if (role === "assistant") {
      element.dataset.status = status || "complete";
      labelEmptyAnswer(element, status);
    }
    ui.messages.append(element);
    scrollToEnd(true);
    return element;
  }

  function appendText(element, text) {
    answerTexts.set(element, (answerTexts.get(element) || "") + text);
    scheduleRender(element);
  }

  // While an answer streams it is drawn again at most once per animation frame, and
  // less often when drawing gets slow (a long answer): at most a fifth of the time.
  function scheduleRender(element) {
    dirtyAnswers.add(element);
    if (renderFrame) return;
    renderFrame = requestAnimationFrame(function drawDirtyAnswers(now) {
      if (now - lastRenderAt < 4 * lastRenderCost) {
        renderFrame = requestAnimationFrame(drawDirtyAnswers);
        return;
      }
      renderFrame = 0;
      for (const dirty of [...dirtyAnswers]) renderAnswer(dirty, false);
    });
  }

  function renderAnswer(element, final) {
    dirtyAnswers.delete(element);
    const nearEnd = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    const started = performance.now();
    const bubble = element.querySelector(".bubble");
    const text = answerTexts.get(element) || "";
    if (final) drawFinalMarkdown(bubble, text);
    else drawStreamingMarkdown(bubble, text);
    lastRenderAt = performance.now();
    lastRenderCost = lastRenderAt - started;
    scrollToEnd(nearEnd);
  }

  function setMeta(element, text) {
    element.querySelector(".meta").textContent = text;
  }

  function finishAnswer(element, status, meta) {
    // The final text is drawn now, as a reopened conversation draws it.
    if (answerTexts.has(element)) renderAnswer(element, true);
    element.classList.remove("streaming");
    if (status && status !== "complete") element.classList.add(status);
    element.dataset.status = status || "complete";
    labelEmptyAnswer(element, status);
    setMeta(element, meta);
  }

  function scrollToEnd(really) {
    if (really) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function clearMessages() {
    ui.messages.querySelectorAll(".message").forEach((m) => m.remove());
    dirtyAnswers.clear();
    ui.empty.hidden = false;
  }

  // --- answers as Markdown ---------------------------------------------
  // marked parses the answer; raw HTML in it is turned into text (a model's HTML
  // never becomes markup); highlight.js colours code in a language it knows;
  // DOMPurify then keeps only the tags, attributes and link schemes below (a second
  // wall, should marked ever let something through); links open in a new tab with
  // no opener; each code block gets a Copy button.

  const MARKDOWN_TAGS = [
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
  ];
  const MARKDOWN_ATTRIBUTES = ["href", "title", "class", "start", "align"];
  const LINK_SCHEMES = /^(?:https?:|mailto:)/i;
  // The classes highlight.js writes ("hljs-title function_") and the code's language.
  const CODE_CLASS = /^(?:hljs(?:-[\w-]+)?|language-[\w+#.-]+|[a-z]+_)$/;
  const answerTexts = new WeakMap(); // an answer's element -> its Markdown so far
  const dirtyAnswers = new Set(); // answers whose text changed since they were drawn
  const streamedBlocks = new WeakMap(); // a streaming answer's bubble -> its settled blocks
  let renderFrame = 0;
  let lastRenderAt = 0;
  let lastRenderCost = 0;
  const markdown = buildMarkdown();

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  // Return { lex(text) -> marked's block tokens, draw(tokens) -> sanitized
  // DocumentFragment }, or null when a vendored library did not load (answers are
  // then shown as plain text). Drawing tokens one group at a time gives the same
  // nodes as drawing them all at once: marked's output is their concatenation.
  function buildMarkdown() {
    const { marked, DOMPurify, hljs } = window;
    if (!marked || !marked.Marked || !DOMPurify || !DOMPurify.isSupported || !hljs) return null;
    const parser = new marked.Marked({ gfm: true, breaks: true, async: false, silent: true });
    parser.use({
      renderer: {
        // Raw HTML is shown as written: a block of it as a paragraph, its lines kept.
        html: ({ text, block }) =>
          block ? `<p>${escapeHtml(text.trim()).replace(/\n/g, "<br>")}</p>` : escapeHtml(text),
        code: ({ text, lang }) => codeBlock(hljs, text, lang),
        checkbox: ({ checked }) => (checked ? "\u2611 " : "\u2610 "),
        link(token) {
          // false: marked's own rendering; anything but http(s) and mailto stays text.
          return LINK_SCHEMES.test(token.href.trim()) ? false : this.parser.parseInline(token.tokens);
        },
        image({ href, text }) {
          // An image would load by itself (a model could leak the chat through its URL): a link instead.
          const label = escapeHtml(`Image: ${text || href}`);
          if (!/^https?:/i.test(href.trim())) return label;
          return `<a href="${escapeHtml(href.trim())}">${label}</a>`;
        },
      },
    });
    DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
      if (data.attrName === "class") {
        data.keepAttr = data.attrValue.split(/\s+/).every((name) => CODE_CLASS.test(name));
      }
    });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    const config = {
      ALLOWED_TAGS: MARKDOWN_TAGS,
      ALLOWED_ATTR: MARKDOWN_ATTRIBUTES,
      ALLOWED_URI_REGEXP: LINK_SCHEMES,
      ALLOW_DATA_ATTR: false,
      RETURN_DOM_FRAGMENT: true,
    };
    return {
      lex: (text) => parser.lexer(text),
      draw(tokens) {
        const fragment = DOMPurify.sanitize(parser.parser(tokens).trim(), config);
        // Blank lines between blocks are marked's, not the answer's.
        for (const node of [...fragment.childNodes]) {
          if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
        }
        for (const pre of fragment.querySelectorAll("pre")) addCodeHead(pre);
        return fragment;
      },
    };
  }

  function codeBlock(hljs, text, lang) {
    const name = String(lang || "").trim().split(/\s+/)[0].toLowerCase();
    const known = name && hljs.getLanguage(name) ? name : "";
    const body = known
      ? hljs.highlight(text, { language: known, ignoreIllegals: true }).value
      : escapeHtml(text);
    const classes = known ? `hljs language-${escapeHtml(known)}` : "hljs";
    return `<pre><code class="${classes}">${body}</code></pre>`;
  }

  // Offsets into the text must match marked's, which reads any line end as "\n".
  function newlines(text) {
    return text.replace(/\r\n?/g, "\n");
  }

  // Draw TEXT into BUBBLE from scratch: a reopened answer, or the end of a streamed one.
  function renderMarkdown(bubble, text) {
    streamedBlocks.delete(bubble);
    if (!markdown) {
      bubble.textContent = text;
      return;
    }
    bubble.replaceChildren(markdown.draw(markdown.lex(newlines(text))));
  }

  // While an answer streams, the blocks before its last one are settled: drawn once
  // and kept. Only the last block, the one still growing, is parsed and drawn again,
  // so a long answer costs no more per frame than a short one.
  function drawStreamingMarkdown(bubble, text) {
    if (!markdown) {
      bubble.textContent = text;
      return;
    }
    const whole = newlines(text);
    let blocks = streamedBlocks.get(bubble);
    if (!blocks) {
      blocks = { raws: [], length: 0, live: [] }; // settled blocks' sources, their length, live nodes
      streamedBlocks.set(bubble, blocks);
      bubble.replaceChildren();
    }
    const tokens = markdown.lex(whole.slice(blocks.length));
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === "space") last -= 1;
    const settled = tokens.slice(0, Math.max(last, 0));
    const settledSource = settled.map((token) => token.raw).join("");
    for (const node of blocks.live) node.remove();
    let live = tokens;
    if (settled.length && whole.startsWith(settledSource, blocks.length)) {
      bubble.append(markdown.draw(settled));
      blocks.raws.push(...settled.map((token) => token.raw));
      blocks.length += settledSource.length;
      live = tokens.slice(settled.length);
    }
    const fragment = markdown.draw(live);
    blocks.live = [...fragment.childNodes];
    bubble.append(fragment);
  }

  // The end of a streamed answer. Its settled blocks stay when a parse of the whole
  // text has exactly them first (a reference link defined later, or a list joined
  // across them, would make a difference): the answer then ends exactly as a
  // reopened one is drawn, without drawing a long answer twice.
  function drawFinalMarkdown(bubble, text) {
    const blocks = streamedBlocks.get(bubble);
    if (!markdown || !blocks) return renderMarkdown(bubble, text);
    streamedBlocks.delete(bubble);
    const tokens = markdown.lex(newlines(text));
    const kept = blocks.raws.length;
    const same =
      Object.keys(tokens.links || {}).length === 0 &&
      tokens.length >= kept &&
      blocks.raws.every((raw, index) => tokens[index].raw === raw);
    if (!same) return renderMarkdown(bubble, text);
    for (const node of blocks.live) node.remove();
    bubble.append(markdown.draw(tokens.slice(kept)));
  }

  // Put a code block in a frame with its language and a Copy button above it.
  function addCodeHead(pre) {
    const code = pre.querySelector("code");
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const language = document.createElement("span");
    language.className = "code-language";
    const named = code && /(?:^|\s)language-(\S+)/.exec(code.className);
    language.textContent = named ? named[1] : "";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy the code");
    head.append(language, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }

  async function copyCode(button) {
    const code = button.closest(".code-block").querySelector("pre code, pre");
    const copied = await copyText(code.textContent);
    button.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // Refused (no permission, page not focused): try the old way below.
      }
    }
    // Pages served over plain http to another host have no clipboard API.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    area.remove();
    return copied;
  }

  // --- the provider and model picker -----------------------------------

  // Draw the picker from the provider list. REASON, when the provider wanted is not
  // there, says why it was wanted (a reopened conversation); the person is told the
  // picker switched, and to what, rather than seeing it jump without a word.
  function renderProviders(reason) {
    const providers = state.providers;
    const shown = ui.provider.value;
    const wanted = state.wantedProvider || shown;
    const fallback = providers.find((p) => p.is_default) || providers[0];
    const chosen = providers.find((p) => p.name === wanted) || fallback;
    ui.provider.replaceChildren(
      ...providers.map((p) => new Option(p.is_default ? `${p.name} (default)` : p.name, p.name))
    );
    if (!providers.length) ui.provider.append(new Option("No provider is serving", ""));
    ui.provider.value = chosen ? chosen.name : "";
    const lost = wanted && !providers.some((p) => p.name === wanted);
    if (lost && (reason || shown === wanted)) {
      const instead = chosen ? `the picker switched to ${chosen.name}` : "no provider is serving";
      const why = reason || `${wanted} was disabled or removed`;
      showNotice(`${why}; ${instead}.`, "picker");
    } else if (!lost && state.noticeKind === "picker" && !reason) {
      clearNotice("picker"); // the provider wanted is back
    }
    renderModels();
    updateControls();
  }

  function showNotice(text, kind) {
    state.noticeKind = kind;
    ui.noticeText.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.hidden = false;
  }

  function clearNotice(kind) {
    if (kind && state.noticeKind !== kind) return;
    state.noticeKind = null;
    ui.notice.hidden = true;
    ui.noticeText.textContent = "";
  }

  function currentProvider() {
    return state.providers.find((p) => p.name === ui.provider.value) || null;
  }

  function renderModels() {
    const provider = currentProvider();
    const models = provider ? [...provider.models] : [];
    // A reopened conversation's model stays selectable even if no longer listed.
    if (provider && state.wantedModel && provider.name === state.wantedProvider) {
      if (!models.includes(state.wantedModel)) models.push(state.wantedModel);
    }
    ui.model.replaceChildren(...models.map((m) => new Option(m, m)));
    if (!models.length) ui.model.append(new Option("default", ""));
    if (provider && models.includes(state.wantedModel)) ui.model.value = state.wantedModel;
    else if (provider && provider.default_model) ui.model.value = provider.default_model;
    renderHealth(provider);
  }

  function renderHealth(provider) {
    ui.health.className = "health";
    if (state.offline) {
      // What the server last said may no longer be true: grey, until it speaks again.
      ui.health.classList.add("offline");
      ui.health.textContent = "no connection";
      ui.health.title = "No connection to Echo: provider health unknown";
      return;
    }
    if (!provider) {
      ui.health.textContent = "";
      return;
    }
    let label = "not checked yet";
    if (provider.breaker === "open") {
      label = "paused";
      ui.health.classList.add("paused");
    } else if (provider.health.available === true) {
      label = "healthy";
      ui.health.classList.add("up");
    } else if (provider.health.available === false) {
      label = "down";
      ui.health.classList.add("down");
    }
    ui.health.textContent = label;
    ui.health.title = `${provider.name}: ${label}`;
  }

  // --- conversations ---------------------------------------------------

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 || response.status === 403) {
      location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname)}`);
      throw new Error("not logged in");
    }
    return response;
  }

  // The conversation list: the first page, or the next one appended (MORE), of the
  // conversations matching the search text. An answer to an older request is dropped.
  async function loadConversations(more = false) {
    if (state.renaming) {
      state.listStale = true; // drawn again once the title is saved
      return;
    }
    const request = ++state.listRequest;
    let path = `/api/conversations/${state.search ? `?q=${encodeURIComponent(state.search)}` : ""}`;
    if (more && state.listNext) path = state.listNext;
    let response;
    try {
      response = await api(path);
    } catch (error) {
      return; // offline: the list stays as it was, and is asked for on reconnection
    }
    if (request !== state.listRequest || state.renaming) return;
    if (!response.ok) {
      const problem = await errorMessage(response);
      ui.conversationsEmpty.textContent = `The list could not be loaded: ${problem}`;
      ui.conversationsEmpty.hidden = false;
      return;
    }
    const page = await response.json();
    if (request !== state.listRequest || state.renaming) return;
    if (more) ui.conversations.append(...page.results.map(conversationItem));
    else showConversations(page.results);
    // The next page's address, kept on this origin (the server writes it absolute).
    const next = page.next ? new URL(page.next, location.href) : null;
    state.listNext = next ? `${next.pathname}${next.search}` : null;
    ui.more.hidden = !state.listNext;
    const none = !ui.conversations.children.length;
    ui.conversationsEmpty.hidden = !none;
    ui.conversationsEmpty.textContent = none
      ? state.search
        ? `No conversation mentions “${state.search}”.`
        : "No conversations yet."
      : "";
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) {
        return body.error.field ? `${body.error.message} (${body.error.field})` : body.error.message;
      }
    } catch (error) {
      // Not JSON: the status says enough.
    }
    return `HTTP ${response.status}`;
  }

  function searchChanged() {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => {
      const text = ui.search.value.trim();
      if (text === state.search) return;
      state.search = text;
      loadConversations();
    }, SEARCH_DELAY_MS);
  }

  // The first page of the list, drawn again. An item already there whose title is the same is
  // kept, and only moved where the order changed: a refresh that swapped the button under a
  // pointer pressing it would lose the click (mousedown on one node, mouseup on another).
  function showConversations(conversations) {
    const drawn = new Map();
    for (const item of ui.conversations.children) drawn.set(item.dataset.id, item);
    const items = conversations.map((conversation) => {
      const item = drawn.get(String(conversation.id));
      if (!item || item.dataset.title !== (conversation.title || "")) return conversationItem(conversation);
      item.classList.toggle("current", conversation.id === state.conversation);
      return item;
    });
    const shown = new Set(items);
    for (const item of [...ui.conversations.children]) if (!shown.has(item)) item.remove();
    let at = ui.conversations.firstElementChild;
    for (const item of items) {
      if (item === at) at = at.nextElementSibling;
      else ui.conversations.insertBefore(item, at);
    }
  }

  function conversationItem(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    item.dataset.title = conversation.title || "";
    if (conversation.id === state.conversation) item.classList.add("current");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title || `Conversation ${conversation.id}`;
    open.addEventListener("click", () => openConversation(conversation.id, "push"));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "rename";
    rename.setAttribute("aria-label", `Rename ${open.textContent}`);
    rename.title = "Rename";
    rename.textContent = "✎";
    rename.addEventListener("click", () => startRename(item, conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.setAttribute("aria-label", `Delete ${open.textContent}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    item.append(open, rename, remove);
    return item;
  }

  // Edit a title in its place in the list: Enter (or leaving the field) saves, Escape cancels.
  function startRename(item, conversation) {
    if (state.renaming) return;
    state.renaming = true;
    const open = item.querySelector("button.open");
    const before = conversation.title || "";
    const field = document.createElement("input");
    field.type = "text";
    field.className = "rename-field";
    field.value = before;
    field.maxLength = 200;
    field.setAttribute("aria-label", "New title");
    open.replaceWith(field);
    item.classList.add("renaming");
    field.focus();
    field.select();
    let settled = false;
    const finish = async (save) => {
      if (settled) return;
      settled = true;
      const title = field.value.trim();
      if (save && title && title !== before) {
        const response = await api(`/api/conversations/${conversation.id}/`, {
          method: "PATCH",
          headers: { "Content-Type": "application/json", "X-CSRFToken": app.dataset.csrf },
          body: JSON.stringify({ title }),
        });
        if (response.ok) {
          const renamed = await response.json();
          conversation.title = renamed.title;
          item.dataset.title = renamed.title;
          if (state.conversation === conversation.id) ui.title.textContent = renamed.title;
        } else {
          setStatus(`The conversation was not renamed: ${await errorMessage(response)}`);
        }
      }
      open.textContent = conversation.title || `Conversation ${conversation.id}`;
      field.replaceWith(open);
      item.classList.remove("renaming");
      state.renaming = false;
      if (state.listStale) {
        state.listStale = false;
        loadConversations();
      }
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    field.addEventListener("blur", () => finish(true));
  }

  // --- conversations and the address bar ---------------------------------

  function conversationPath(id) {
    return id ? `/chat/c/${id}` : "/";
  }

  // The conversation /chat/c/<id> names: its id, 0 for a path that is no id, null elsewhere.
  function conversationInPath(path) {
    const found = /^\/chat\/c\/([^/]+)\/?$/.exec(path);
    if (!found) return null;
    return /^[1-9][0-9]{0,18}$/.test(found[1]) ? Number(found[1]) : 0;
  }

  // HOW: "push" a new history entry, "replace" the current one, or leave the address.
  function setUrl(id, how) {
    const path = conversationPath(id);
    if (how === "push" && location.pathname !== path) history.pushState({ conversation: id }, "", path);
    else if (how === "replace") history.replaceState({ conversation: id }, "", path);
  }

  function conversationMissing() {
    showNotice(
      "That conversation was not found: it was deleted, or the link is not to one of yours.",
      "missing"
    );
  }

  async function openConversation(id, how) {
    if (busy()) return setStatus("Wait for the answer, or stop it, first.");
    const opening = ++state.opening;
    let response;
    try {
      response = await api(`/api/conversations/${id}/`);
    } catch (error) {
      return setStatus("The conversation could not be opened: no connection to Echo.");
    }
    if (opening !== state.opening) return; // another was asked for meanwhile
    if (!response.ok) {
      if (response.status === 404) {
        conversationMissing();
        if (how === "push") loadConversations();
      } else {
        setStatus(`The conversation could not be opened: ${await errorMessage(response)}`);
      }
      return;
    }
    const conversation = await response.json();
    if (opening !== state.opening || busy()) return;
    state.conversation = conversation.id;
    setUrl(conversation.id, how);
    ui.title.textContent = conversation.title || `Conversation ${conversation.id}`;
    clearNotice();
    clearMessages();
    let last = null;
    for (const message of conversation.messages) {
      const meta =
        message.role === "assistant"
          ? answerDetails({
              provider: message.provider,
              model: message.model,
              status: message.status,
              promptTokens: message.prompt_tokens,
              completionTokens: message.completion_tokens,
              firstChunkMs: message.first_chunk_ms,
              latencyMs: message.latency_ms,
              error: message.status === "failed" && message.error ? message.error.message : "",
            })
          : "";
      const element = addMessage(message.role, message.content, meta, message.status);
      if (message.role === "assistant") showFailover(element, message.fallback_path, message.provider);
      if (message.role === "assistant" && message.provider) last = message;
    }
    if (last) restorePicker(last.provider, last.model);
    closeSidebar();
    loadConversations();
  }

  // Select the provider and model of a reopened conversation's last answer.
  function restorePicker(provider, model) {
    state.wantedProvider = provider;
    state.wantedModel = model || null;
    const there = state.providers.some((p) => p.name === provider);
    renderProviders(
      there ? undefined : `This conversation was last answered by ${provider}, which is not available now`
    );
  }

  async function deleteConversation(id) {
    if (!window.confirm("Delete this conversation?")) return;
    await api(`/api/conversations/${id}/`, {
      method: "DELETE",
      headers: { "X-CSRFToken": app.dataset.csrf },
    });
    if (state.conversation === id && !busy()) newConversation("replace");
    loadConversations();
  }

  function newConversation(how) {
    if (busy()) return setStatus("Wait for the answer, or stop it, first.");
    state.opening += 1; // a conversation still loading is not shown after all
    state.conversation = null;
    setUrl(null, how);
    ui.title.textContent = "New chat";
    clearNotice("missing");
    clearMessages();
    closeSidebar();
    loadConversations();
    ui.input.focus();
  }

  // Back and forward: show the conversation the address names.
  function followAddress() {
    const id = conversationInPath(location.pathname);
    if (id === state.conversation) return;
    if (busy()) {
      // The answer under way belongs to the conversation shown: stay on it.
      setUrl(state.conversation, "push");
      return setStatus("Wait for the answer, or stop it, first.");
    }
    if (id) openConversation(id, "none");
    else if (id === 0) {
      newConversation("none");
      conversationMissing();
    } else newConversation("none");
  }

  // --- the composer ----------------------------------------------------

  function busy() {
    return Boolean(state.pending || state.answering);
  }

  function updateControls() {
    const connected = Boolean(state.socket && state.socket.readyState === WebSocket.OPEN);
    ui.send.hidden = busy();
    ui.stop.hidden = !busy();
    ui.send.disabled = !connected || !ui.provider.value;
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  // Characters as the server counts them (code points, not UTF-16 units).
  function characters(text) {
    if (text.length <= MAX_MESSAGE_CHARS) return text.length; // never more than its units
    let count = 0;
    for (const _ of text) count += 1;
    return count;
  }

  function grouped(number) {
    return number.toLocaleString("en-US");
  }

  // Why FRAME cannot be sent, in plain words, or "" when it can. The text stays in the box.
  function tooLong(frame) {
    const length = characters(frame.message);
    if (length > MAX_MESSAGE_CHARS) {
      return (
        `This message is too long to send: ${grouped(length)} characters, and one message can ` +
        `have at most ${grouped(MAX_MESSAGE_CHARS)}. Shorten it or split it into parts; ` +
        "your text is still in the box."
      );
    }
    const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
    if (bytes > MAX_FRAME_BYTES) {
      return (
        `This message is too large to send: ${grouped(bytes)} bytes once encoded, and one ` +
        `message can take at most ${grouped(MAX_FRAME_BYTES)}. Shorten it or split it into ` +
        "parts; your text is still in the box."
      );
    }
    return "";
  }

  function send() {
    const text = ui.input.value.trim();
    if (!text || busy()) return;
    const frame = {
      type: "chat",
      conversation: state.conversation,
      message: text,
      provider: ui.provider.value || null,
      model: ui.model.value || null,
    };
    const refusal = tooLong(frame);
    if (refusal) return setStatus(refusal);
    if (!sendFrame(frame)) return setStatus("Not connected yet.");
    setStatus("");
    addMessage("user", text);
    state.pending = addMessage("assistant", "", "", "streaming");
    ui.input.value = "";
    growInput();
    updateControls();
  }

  function growInput() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
  }

  function openSidebar() {
    ui.sidebar.classList.add("open");
    ui.scrim.hidden = false;
  }

  function closeSidebar() {
    ui.sidebar.classList.remove("open");
    ui.scrim.hidden = true;
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.input.addEventListener("input", growInput);
  ui.messages.addEventListener("click", (event) => {
    const copy = event.target.closest("button.copy");
    if (copy) copyCode(copy);
  });
  ui.stop.addEventListener("click", () => sendFrame({ type: "cancel" }));
  ui.provider.addEventListener("change", () => {
    state.wantedProvider = ui.provider.value;
    state.wantedModel = null;
    clearNotice("picker");
    renderModels();
  });
  ui.model.addEventListener("change", () => {
    state.wantedModel = ui.model.value;
  });
  $("new-chat").addEventListener("click", () => newConversation("push"));
  ui.search.addEventListener("input", searchChanged);
  ui.more.addEventListener("click", () => loadConversations(true));
  $("notice-close").addEventListener("click", () => clearNotice());
  window.addEventListener("popstate", followAddress);
  $("open-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", closeSidebar);
  ui.scrim.addEventListener("click", closeSidebar);

  // Changes of configuration are pushed; health is not, so ask again now and then.
  setInterval(() => {
    if (document.visibilityState === "visible") sendFrame({ type: "providers" });
  }, HEALTH_REFRESH_MS);

  window.addEventListener("online", reconnectNow);
  window.addEventListener("pagehide", () => {
    state.leaving = true;
  });
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    state.leaving = false; // back from the back-forward cache
    if (!state.socket) reconnectNow();
  });

  renderProviders();
  if (app.dataset.conversationMissing === "true") conversationMissing();
  else if (app.dataset.conversation) openConversation(Number(app.dataset.conversation), "none");
  loadConversations();
  connect();
})();
