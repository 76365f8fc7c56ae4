// The collaborative editor's page: Yjs + CodeMirror 6 (y-codemirror.next), centrifuge-js,
// all from npm, bundled by esbuild into static/dist/editor.js (`npm run build`).
//
// doc:NAME      Yjs updates, base64 in JSON, published as the document changes.
// cursors:NAME  Yjs awareness (name, colour, cursor, selection); presence says who is here.
// sync (RPC)    after each (re)subscribe: our state vector in, what we lack out (plus the
//               server's state vector, from which we publish what the server lacks).
import * as Y from "yjs";
import {
  Awareness,
  applyAwarenessUpdate,
  encodeAwarenessUpdate,
  removeAwarenessStates,
} from "y-protocols/awareness";
import { yCollab, yUndoManagerKeymap } from "y-codemirror.next";
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { Centrifuge } from "centrifuge";

const $ = (id) => document.getElementById(id);
const NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
const COLOURS = ["#d1495b", "#edae49", "#00798c", "#30638e", "#6a4c93", "#2a9d8f", "#e76f51", "#3a86ff"];
const REMOTE = "remote"; // the origin of changes that came from the server
const SEND_EVERY_MS = 40; // local updates are merged and sent at most this often

const store = {
  get(key) { try { return localStorage.getItem(key); } catch (e) { return null; } },
  set(key, value) { try { localStorage.setItem(key, value); } catch (e) { /* private mode */ } },
};

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const me = { user: store.get("tidings-editor-user") || randomId(), name: "", colour: "", client: "" };
store.set("tidings-editor-user", me.user);

let centrifuge = null;
let current = null; // the open document

// ------------------------------------------------------------------ connection

function setStatus(state) {
  $("status").dataset.state = state;
  $("status").textContent = state;
  document.body.dataset.state = state;
}

function showEntry(error) {
  $("workspace").hidden = true;
  $("entry").hidden = false;
  $("entry-name").value = store.get("tidings-editor-name") || "";
  const colour = store.get("tidings-editor-colour") || COLOURS[Math.floor(Math.random() * COLOURS.length)];
  $("colours").replaceChildren(...COLOURS.map((value) => {
    const label = document.createElement("label");
    label.style.background = value;
    label.title = value;
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "colour";
    input.value = value;
    input.checked = value === colour;
    input.setAttribute("aria-label", value);
    label.append(input);
    return label;
  }));
  $("entry-error").textContent = error || "";
  $("entry-name").focus();
}

function start(name, colour) {
  $("entry").hidden = true;
  $("workspace").hidden = false;
  me.name = name;
  me.colour = colour;
  centrifuge = new Centrifuge(
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket",
    { data: { name: name, colour: colour, user: me.user } },
  );
  centrifuge.on("state", (ctx) => setStatus(ctx.newState));
  centrifuge.on("connected", (ctx) => {
    me.client = ctx.client;
    loadDocuments();
  });
  centrifuge.on("disconnected", (ctx) => {
    if (ctx.code >= 400 && ctx.code < 2000) { // on_connect refused the entry: say why
      closeDocument();
      centrifuge = null;
      showEntry(ctx.reason);
    }
  });
  openDocument(documentFromHash());
  centrifuge.connect();
}

// ------------------------------------------------------------------ a document

function documentFromHash() {
  const name = decodeURIComponent(location.hash.slice(1));
  return NAME.test(name) ? name : "welcome";
}

function closeDocument() {
  if (!current) return;
  clearInterval(current.timer);
  for (const sub of [current.docSub, current.cursorSub]) {
    sub.unsubscribe();
    centrifuge.removeSubscription(sub);
  }
  current.view.destroy();
  current.awareness.destroy();
  current.ydoc.destroy();
  current = null;
}

function openDocument(name) {
  closeDocument();
  delete document.body.dataset.synced;
  $("notice").textContent = "";
  $("doc-title").textContent = name;
  document.title = name + " · tidings editor";
  document.body.dataset.doc = name;

  const ydoc = new Y.Doc();
  const ytext = ydoc.getText("text");
  const awareness = new Awareness(ydoc);
  awareness.setLocalStateField("user", { name: me.name, color: me.colour, colorLight: me.colour + "33" });
  const doc = {
    name: name,
    ydoc: ydoc,
    ytext: ytext,
    awareness: awareness,
    docSub: centrifuge.newSubscription("doc:" + name),
    cursorSub: centrifuge.newSubscription("cursors:" + name, { joinLeave: true }),
    people: new Map(), // tidings client id -> ClientInfo
    yjsClients: new Map(), // tidings client id -> Yjs client id (whose cursor it is)
    pending: [], // local updates not sent yet
    timer: 0,
    synced: false,
    view: null,
  };
  current = doc;

  doc.view = new EditorView({
    doc: "",
    extensions: [
      basicSetup,
      keymap.of(yUndoManagerKeymap),
      EditorView.lineWrapping,
      yCollab(ytext, awareness, { undoManager: new Y.UndoManager(ytext) }),
    ],
    parent: $("editor"),
  });
  $("editor").replaceChildren(doc.view.dom);

  // Local edits: merged for a few milliseconds, then published. An update that cannot be
  // published now (offline) is not lost: it stays in the Y.Doc, and the next sync sends
  // whatever the server lacks.
  ydoc.on("update", (update, origin) => {
    if (origin === REMOTE) return;
    doc.pending.push(update);
    if (!doc.timer) doc.timer = setTimeout(() => flush(doc), SEND_EVERY_MS);
  });

  doc.docSub.on("publication", (ctx) => {
    Y.applyUpdate(ydoc, fromBase64(ctx.data.update), REMOTE);
  });
  doc.docSub.on("subscribing", () => { doc.synced = false; delete document.body.dataset.synced; });
  doc.docSub.on("subscribed", () => sync(doc));

  // Awareness: ours goes out whenever it changes (and every 15 s, Yjs renews it);
  // theirs comes in with the Yjs client id, so a leave can take the cursor away.
  awareness.on("update", (changes, origin) => {
    if (origin === "local") publishAwareness(doc);
  });
  doc.cursorSub.on("publication", (ctx) => {
    if (!ctx.info || ctx.info.client === me.client) return;
    doc.yjsClients.set(ctx.info.client, ctx.data.client_id);
    applyAwarenessUpdate(awareness, fromBase64(ctx.data.update), REMOTE);
  });
  doc.cursorSub.on("join", (ctx) => {
    doc.people.set(ctx.info.client, ctx.info);
    renderPeople(doc);
    if (ctx.info.client !== me.client) publishAwareness(doc); // so the newcomer sees us
  });
  doc.cursorSub.on("leave", (ctx) => {
    doc.people.delete(ctx.info.client);
    forget(doc, ctx.info.client);
    renderPeople(doc);
  });
  doc.cursorSub.on("subscribed", async () => {
    try {
      const presence = await doc.cursorSub.presence();
      doc.people = new Map(Object.values(presence.clients).map((info) => [info.client, info]));
    } catch (err) { return; }
    for (const client of [...doc.yjsClients.keys()]) {
      if (!doc.people.has(client)) forget(doc, client);
    }
    renderPeople(doc);
    publishAwareness(doc);
  });

  doc.docSub.subscribe();
  doc.cursorSub.subscribe();
  renderPeople(doc);
  window.editor.doc = doc;
}

async function sync(doc) {
  try {
    const reply = await centrifuge.rpc("sync", {
      doc: doc.name,
      state_vector: toBase64(Y.encodeStateVector(doc.ydoc)),
    });
    if (current !== doc) return;
    Y.applyUpdate(doc.ydoc, fromBase64(reply.data.update), REMOTE);
    // What the server lacks: edits made here while offline (or not yet sent).
    const missing = Y.encodeStateAsUpdate(doc.ydoc, fromBase64(reply.data.state_vector));
    if (missing.length > 2) await publishUpdate(doc, missing);
  } catch (err) {
    if (current === doc) $("notice").textContent = "could not sync: " + (err.message || err.code);
    return; // the next (re)subscribe syncs again
  }
  if (current !== doc) return;
  doc.synced = true;
  document.body.dataset.synced = "true";
  loadDocuments();
}

async function flush(doc) {
  doc.timer = 0;
  if (!doc.pending.length) return;
  const update = Y.mergeUpdates(doc.pending);
  doc.pending = [];
  if (!doc.synced) return; // the sync after (re)subscribing sends it
  try {
    await publishUpdate(doc, update);
  } catch (err) { /* offline: the next sync sends it */ }
}

async function publishUpdate(doc, update) {
  try {
    await doc.docSub.publish({ update: toBase64(update) });
    if (current === doc) $("notice").textContent = "";
    loadDocumentsSoon(); // the list shows each document's first line
  } catch (err) {
    if (err && err.code === 107 && current === doc) {
      $("notice").textContent = "not saved: that change is too large to send at once";
    }
    throw err;
  }
}

function publishAwareness(doc) {
  if (current !== doc || doc.cursorSub.state !== "subscribed") return;
  const update = encodeAwarenessUpdate(doc.awareness, [doc.ydoc.clientID]);
  doc.cursorSub.publish({ client_id: doc.ydoc.clientID, update: toBase64(update) }).catch(() => {});
}

function forget(doc, client) {
  const yjsClient = doc.yjsClients.get(client);
  doc.yjsClients.delete(client);
  // The same person may be back already on a new connection (after a network drop):
  // keep the cursor while any connection still speaks for it.
  if (yjsClient !== undefined && ![...doc.yjsClients.values()].includes(yjsClient)) {
    removeAwarenessStates(doc.awareness, [yjsClient], REMOTE);
  }
}

function renderPeople(doc) {
  const users = new Map();
  for (const info of doc.people.values()) users.set(info.user, info.connInfo || {});
  const sorted = [...users].sort((a, b) => String(a[1].name).localeCompare(String(b[1].name)));
  $("people").replaceChildren(...sorted.map(([user, info]) => {
    const li = document.createElement("li");
    li.textContent = user === me.user ? info.name + " (you)" : info.name;
    li.style.setProperty("--colour", info.colour || "#888");
    if (user === me.user) li.className = "me";
    return li;
  }));
}

// ------------------------------------------------------------------ the documents list

let documentsTimer = 0;
function loadDocumentsSoon() {
  clearTimeout(documentsTimer);
  documentsTimer = setTimeout(loadDocuments, 2000);
}

async function loadDocuments() {
  if (!centrifuge || centrifuge.state !== "connected") return;
  let documents = [];
  try {
    documents = (await centrifuge.rpc("documents", {})).data;
  } catch (err) { return; }
  if (current && !documents.some((d) => d.name === current.name)) {
    documents.unshift({ name: current.name, title: "" });
  }
  $("documents").replaceChildren(...documents.map((d) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#" + d.name;
    a.setAttribute("aria-current", String(current !== null && d.name === current.name));
    const name = document.createElement("strong");
    name.textContent = d.name;
    const title = document.createElement("span");
    title.textContent = d.title;
    a.append(name, title);
    li.append(a);
    return li;
  }));
}
setInterval(loadDocuments, 15000);

// ------------------------------------------------------------------ the page

$("entry").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("entry-name").value.trim();
  const picked = document.querySelector("#colours input:checked");
  if (!name) return;
  const colour = picked ? picked.value : COLOURS[0];
  store.set("tidings-editor-name", name);
  store.set("tidings-editor-colour", colour);
  start(name, colour);
});

window.addEventListener("hashchange", () => {
  const name = documentFromHash();
  if (centrifuge && (!current || current.name !== name)) openDocument(name);
});

$("new-doc").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("new-doc-name").value.trim().toLowerCase().replace(/\s+/g, "-");
  if (!NAME.test(name)) {
    $("notice").textContent = "a document name is 1-32 lowercase letters, digits or dashes";
    return;
  }
  $("new-doc-name").value = "";
  location.hash = name;
});

// For the tests (and the curious, in the browser console).
window.editor = {
  get centrifuge() { return centrifuge; },
  doc: null,
  text() { return current ? current.ytext.toString() : ""; },
};

document.body.dataset.ready = "true";
showEntry("");
