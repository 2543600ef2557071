// Echo's chat page: one websocket (/ws/chat/) for the chat and the provider list,
// /api/conversations/ for past conversations. Plain JavaScript, no build step.
"use strict";

(() => {
  const HEALTH_REFRESH_MS = 30000;
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const ui = {
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    conversations: $("conversations"),
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
    socket: null,
    retry: 500,
    providers: JSON.parse($("initial-providers").textContent),
    wantedProvider: null, // what the person picked, kept while it is briefly missing
    wantedModel: null,
    conversation: null,
    pending: null, // the answer's element, sent but not started
    answering: null, // the answer's element, streaming
  };

  // --- the websocket ---------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${app.dataset.socketPath}`);
    state.socket = socket;
    socket.addEventListener("open", () => {
      state.retry = 500;
      setStatus("");
      updateControls();
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      state.socket = null;
      const unfinished = state.answering || state.pending;
      if (unfinished) finishAnswer(unfinished, "failed", "The connection dropped.");
      updateControls();
      // A refused handshake looks like any other close: ask the API whether the login expired.
      fetch("/api/conversations/", { headers: { Accept: "application/json" } }).then((r) => {
        if (r.status === 401 || r.status === 403) {
          location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname)}`);
          return;
        }
        setStatus("Connection lost; reconnecting…");
        setTimeout(connect, state.retry);
        state.retry = Math.min(state.retry * 2, 10000);
      }, () => setTimeout(connect, state.retry));
    });
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
        if (state.answering) appendText(state.answering, frame.content);
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
      loadConversations();
    }
  }

  function onDone(frame) {
    const element = state.answering;
    state.answering = null;
    if (element) {
      const parts = [who(frame.provider, frame.model)];
      if (frame.usage) parts.push(`${frame.usage.total_tokens} tokens`);
      if (frame.first_chunk_ms != null) parts.push(`first chunk ${Math.round(frame.first_chunk_ms)} ms`);
      if (frame.status === "cancelled") parts.push("stopped");
      finishAnswer(element, frame.status, parts.join(" · "));
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

  function addMessage(role, text, meta, status) {
    ui.empty.hidden = true;
    const element = document.createElement("div");
    element.className = `message ${role}`;
    if (status && status !== "complete") element.classList.add(status);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    const line = document.createElement("div");
    line.className = "meta";
    line.textContent = meta || "";
    element.append(bubble, line);
    ui.messages.append(element);
    scrollToEnd(true);
    return element;
  }

  function appendText(element, text) {
    const nearEnd = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    element.querySelector(".bubble").append(text);
    scrollToEnd(nearEnd);
  }

  function setMeta(element, text) {
    element.querySelector(".meta").textContent = text;
  }

  function finishAnswer(element, status, meta) {
    element.classList.remove("streaming");
    if (status && status !== "complete") element.classList.add(status);
    element.dataset.status = status || "complete";
    setMeta(element, meta);
  }

  function scrollToEnd(really) {
    if (really) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function clearMessages() {
    ui.messages.querySelectorAll(".message").forEach((m) => m.remove());
    ui.empty.hidden = false;
  }

  // --- the provider and model picker -----------------------------------

  function renderProviders() {
    const providers = state.providers;
    const wanted = state.wantedProvider;
    const fallback = providers.find((p) => p.is_default) || providers[0];
    const chosen = providers.find((p) => p.name === wanted) || fallback;
    ui.provider.replaceChildren(
      ...providers.map((p) => new Option(p.is_default ? `${p.name} (default)` : p.name, p.name))
    );
    if (!providers.length) ui.provider.append(new Option("No provider is serving", ""));
    ui.provider.value = chosen ? chosen.name : "";
    renderModels();
    updateControls();
  }

  function currentProvider() {
    return state.providers.find((p) => p.name === ui.provider.value) || null;
  }

  function renderModels() {
    const provider = currentProvider();
    const models = provider ? provider.models : [];
    ui.model.replaceChildren(...models.map((m) => new Option(m, m)));
    if (!models.length) ui.model.append(new Option("default", ""));
    if (provider && models.includes(state.wantedModel)) ui.model.value = state.wantedModel;
    else if (provider && provider.default_model) ui.model.value = provider.default_model;
    renderHealth(provider);
  }

  function renderHealth(provider) {
    ui.health.className = "health";
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

  async function loadConversations() {
    const response = await api("/api/conversations/");
    if (!response.ok) return;
    const page = await response.json();
    ui.conversations.replaceChildren(...page.results.map(conversationItem));
  }

  function conversationItem(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    if (conversation.id === state.conversation) item.classList.add("current");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title || `Conversation ${conversation.id}`;
    open.addEventListener("click", () => openConversation(conversation.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.setAttribute("aria-label", `Delete ${open.textContent}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    item.append(open, remove);
    return item;
  }

  async function openConversation(id) {
    if (busy()) return setStatus("Wait for the answer, or stop it, first.");
    const response = await api(`/api/conversations/${id}/`);
    if (!response.ok) return setStatus("That conversation is gone.");
    const conversation = await response.json();
    state.conversation = conversation.id;
    ui.title.textContent = conversation.title || `Conversation ${conversation.id}`;
    clearMessages();
    for (const message of conversation.messages) {
      const meta =
        message.role === "assistant"
          ? [who(message.provider, message.model), message.status !== "complete" ? message.status : ""]
              .filter(Boolean)
              .join(" · ")
          : "";
      addMessage(message.role, message.content, meta, message.status);
    }
    closeSidebar();
    loadConversations();
  }

  async function deleteConversation(id) {
    if (!window.confirm("Delete this conversation?")) return;
    await api(`/api/conversations/${id}/`, {
      method: "DELETE",
      headers: { "X-CSRFToken": app.dataset.csrf },
    });
    if (state.conversation === id && !busy()) newConversation();
    loadConversations();
  }

  function newConversation() {
    if (busy()) return setStatus("Wait for the answer, or stop it, first.");
    state.conversation = null;
    ui.title.textContent = "New chat";
    clearMessages();
    closeSidebar();
    loadConversations();
    ui.input.focus();
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
  ui.stop.addEventListener("click", () => sendFrame({ type: "cancel" }));
  ui.provider.addEventListener("change", () => {
    state.wantedProvider = ui.provider.value;
    state.wantedModel = null;
    renderModels();
  });
  ui.model.addEventListener("change", () => {
    state.wantedModel = ui.model.value;
  });
  $("new-chat").addEventListener("click", newConversation);
  $("open-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", closeSidebar);
  ui.scrim.addEventListener("click", closeSidebar);

  // Changes of configuration are pushed; health is not, so ask again now and then.
  setInterval(() => {
    if (document.visibilityState === "visible") sendFrame({ type: "providers" });
  }, HEALTH_REFRESH_MS);

  renderProviders();
  loadConversations();
  connect();
})();
