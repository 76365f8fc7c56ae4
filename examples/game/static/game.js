// tidings arena: the page sends the direction it holds and draws what the server publishes.
// The server owns the game: every 50 ms it publishes the whole visible state on game:arena
// as {tick, players: [[id, name, x, y, score, dx, dy]...], gems: [[x, y]...]}.
(function () {
  "use strict";
  const STATE = "game:arena";
  const INPUTS = "input:arena";
  const W = 960, H = 600, PLAYER_R = 16, GEM_R = 9;
  const TICK_MS = 50;
  const REPEAT_MS = 400; // a held direction is repeated: the server drops it after a second
  const $ = (id) => document.getElementById(id);

  const canvas = $("arena");
  const ctx2d = canvas.getContext("2d");
  const scheme = location.protocol === "https:" ? "wss" : "ws";

  let centrifuge = null;
  let sub = null;
  let me = "";           // our player id (from the connect reply)
  let prev = null;       // the snapshot before `curr`, for smooth motion between ticks
  let curr = null;       // the latest snapshot
  let currAt = 0;        // when it arrived (performance.now())
  const drawn = [];      // the ticks drawn, in order (the last 1000; tests read them)
  let joinedTick = null; // the tick of the snapshot in the last subscribe reply
  let sent = { dx: 0, dy: 0 };
  let scoresKey = "";
  const keys = new Set();
  let pointer = null;    // where a finger or the mouse is held, in arena units

  // ------------------------------------------------------------------ identity and joining

  function tabKey() {
    // Per tab, kept across reloads: the same key is the same player (the server only ever
    // shows others a hash of it).
    let key = sessionStorage.getItem("tidings-arena-key");
    if (!/^[0-9a-f]{32}$/.test(key || "")) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem("tidings-arena-key", key);
    }
    return key;
  }

  const nameInput = $("name");
  nameInput.value = localStorage.getItem("tidings-arena-name") || "";
  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (!name) return;
    localStorage.setItem("tidings-arena-name", name);
    sessionStorage.setItem("tidings-arena-playing", "1");
    join(name);
  });

  function setStatus(state) {
    $("status").dataset.state = state;
    $("status").textContent = state;
    document.body.dataset.state = state;
  }

  function join(name) {
    $("join").hidden = true;
    $("join-error").textContent = "";
    centrifuge = new Centrifuge(scheme + "://" + location.host + "/connection/websocket", {
      data: { name: name, key: tabKey() },
    });
    centrifuge.on("connecting", () => setStatus("connecting"));
    centrifuge.on("connected", (ctx) => {
      me = (ctx.data && ctx.data.player) || "";
      setStatus("connected");
    });
    centrifuge.on("disconnected", (ctx) => {
      setStatus("disconnected");
      if (ctx.code >= 400 && ctx.code < 2000) { // refused by on_connect: ask again
        $("join-error").textContent = ctx.reason;
        $("join").hidden = false;
        sessionStorage.removeItem("tidings-arena-playing");
      }
    });

    // Each tick differs little from the last: ask for fossil deltas (a few dozen bytes
    // instead of the whole snapshot); centrifuge-js applies them and hands us whole data.
    sub = centrifuge.newSubscription(STATE, { delta: "fossil" });
    sub.on("subscribed", (ctx) => {
      // on_subscribe put the latest snapshot in the reply: draw the arena at once.
      if (ctx.data) { joinedTick = ctx.data.tick; show(ctx.data); }
      document.body.dataset.subscribed = "true";
      send(direction(), true); // (re)join: the server adds us on our first input
    });
    sub.on("subscribing", () => { document.body.dataset.subscribed = "false"; });
    sub.on("publication", (ctx) => show(ctx.data));
    sub.subscribe();
    centrifuge.connect();
    window.game.centrifuge = centrifuge;
    window.game.sub = sub;
  }

  // ------------------------------------------------------------------ state from the server

  function show(snapshot) {
    if (curr) {
      const behind = curr.tick - snapshot.tick;
      // Older or the same tick: a duplicate, never drawn. (Far older: the server started
      // over, e.g. restarted with the memory broker; take it.)
      if (behind >= 0 && behind < 200) return;
    }
    const consecutive = curr && snapshot.tick - curr.tick <= 2;
    prev = consecutive ? curr : snapshot;
    curr = snapshot;
    currAt = performance.now();
    drawn.push(snapshot.tick);
    if (drawn.length > 1000) drawn.shift();
    $("tick").textContent = String(snapshot.tick);
    renderScores(snapshot.players);
  }

  function hue(id) {
    let h = 0;
    for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) % 360;
    return h;
  }

  function renderScores(players) {
    const key = JSON.stringify(players.map((p) => [p[0], p[1], p[4]])) + me;
    if (key === scoresKey) return;
    scoresKey = key;
    $("count").textContent = String(players.length);
    $("scores").replaceChildren(...players.map(([id, name, , , score]) => {
      const li = document.createElement("li");
      li.dataset.player = id;
      if (id === me) li.className = "me";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `hsl(${hue(id)} 75% 60%)`;
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name + (id === me ? " (you)" : "");
      const points = document.createElement("span");
      points.className = "score";
      points.textContent = String(score);
      li.append(swatch, label, points);
      return li;
    }));
  }

  // ------------------------------------------------------------------ input

  const KEYS = {
    ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1],
    a: [-1, 0], d: [1, 0], w: [0, -1], s: [0, 1],
    A: [-1, 0], D: [1, 0], W: [0, -1], S: [0, 1],
  };

  function myPosition() {
    const mine = curr && curr.players.find((p) => p[0] === me);
    return mine ? { x: mine[2], y: mine[3] } : null;
  }

  function direction() {
    let dx = 0, dy = 0;
    for (const key of keys) { dx += KEYS[key][0]; dy += KEYS[key][1]; }
    const at = myPosition();
    if (pointer && at) {
      const vx = pointer.x - at.x, vy = pointer.y - at.y;
      const dist = Math.hypot(vx, vy);
      if (dist > PLAYER_R / 2) { // eight directions, toward the finger
        dx = Math.abs(vx) > dist * 0.38 ? Math.sign(vx) : 0;
        dy = Math.abs(vy) > dist * 0.38 ? Math.sign(vy) : 0;
      }
    }
    return { dx: Math.max(-1, Math.min(1, dx)), dy: Math.max(-1, Math.min(1, dy)) };
  }

  function send(dir, force) {
    if (!force && dir.dx === sent.dx && dir.dy === sent.dy) return;
    sent = dir;
    // Only while connected: a direction queued during an outage would arrive stale.
    if (!centrifuge || centrifuge.state !== "connected") return;
    centrifuge.publish(INPUTS, dir).catch(() => { sent = { dx: NaN, dy: NaN }; });
  }

  window.addEventListener("keydown", (event) => {
    if (!(event.key in KEYS) || event.target === nameInput) return;
    event.preventDefault();
    keys.add(event.key);
    send(direction());
  });
  window.addEventListener("keyup", (event) => {
    if (!keys.delete(event.key)) return;
    send(direction());
  });
  window.addEventListener("blur", () => { keys.clear(); pointer = null; send(direction()); });

  function arenaPoint(event) {
    const rect = canvas.getBoundingClientRect();
    return { x: (event.clientX - rect.left) * W / rect.width, y: (event.clientY - rect.top) * H / rect.height };
  }
  canvas.addEventListener("pointerdown", (event) => {
    pointer = arenaPoint(event);
    canvas.setPointerCapture(event.pointerId);
    send(direction());
  });
  canvas.addEventListener("pointermove", (event) => { if (pointer) pointer = arenaPoint(event); });
  const release = () => { pointer = null; send(direction()); };
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);

  setInterval(() => {
    const dir = direction();
    if (dir.dx || dir.dy) send(dir, true);
  }, REPEAT_MS);

  // ------------------------------------------------------------------ drawing

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(width * H / W * dpr);
  }
  window.addEventListener("resize", resize);
  resize();

  function draw(now) {
    if (pointer) send(direction()); // we move: the way to the finger changes
    const scale = canvas.width / W;
    ctx2d.setTransform(scale, 0, 0, scale, 0, 0);
    ctx2d.clearRect(0, 0, W, H);
    ctx2d.strokeStyle = "rgba(255,255,255,0.05)";
    ctx2d.lineWidth = 1;
    for (let x = 60; x < W; x += 60) { ctx2d.beginPath(); ctx2d.moveTo(x, 0); ctx2d.lineTo(x, H); ctx2d.stroke(); }
    for (let y = 60; y < H; y += 60) { ctx2d.beginPath(); ctx2d.moveTo(0, y); ctx2d.lineTo(W, y); ctx2d.stroke(); }
    if (curr) {
      ctx2d.fillStyle = "#ffcc4d";
      for (const [gx, gy] of curr.gems) {
        ctx2d.beginPath();
        ctx2d.moveTo(gx, gy - GEM_R); ctx2d.lineTo(gx + GEM_R, gy);
        ctx2d.lineTo(gx, gy + GEM_R); ctx2d.lineTo(gx - GEM_R, gy);
        ctx2d.closePath(); ctx2d.fill();
      }
      const alpha = Math.min(1, (now - currAt) / TICK_MS);
      const before = new Map(prev ? prev.players.map((p) => [p[0], p]) : []);
      ctx2d.textAlign = "center";
      ctx2d.font = `${Math.round(Math.max(13, 11 / scale))}px system-ui, sans-serif`; // legible on a phone
      for (const p of curr.players) {
        const [id, name, x, y] = p;
        const from = before.get(id) || p;
        const px = from[2] + (x - from[2]) * alpha;
        const py = from[3] + (y - from[3]) * alpha;
        ctx2d.fillStyle = `hsl(${hue(id)} 75% 60%)`;
        ctx2d.beginPath(); ctx2d.arc(px, py, PLAYER_R, 0, Math.PI * 2); ctx2d.fill();
        if (id === me) {
          ctx2d.strokeStyle = "#ffffff"; ctx2d.lineWidth = 3;
          ctx2d.beginPath(); ctx2d.arc(px, py, PLAYER_R + 3, 0, Math.PI * 2); ctx2d.stroke();
        }
        ctx2d.fillStyle = "#e6e9ef";
        ctx2d.fillText(name, px, py - PLAYER_R - 8);
      }
    }
    requestAnimationFrame(draw);
  }
  requestAnimationFrame(draw);

  // What the tests read: the latest snapshot, our id, the ticks drawn.
  window.game = {
    centrifuge: null,
    sub: null,
    get snapshot() { return curr; },
    get me() { return me; },
    get drawn() { return drawn.slice(); },
    get joinedTick() { return joinedTick; },
  };

  // A reload of a tab that was playing goes straight back in, as the same player.
  if (sessionStorage.getItem("tidings-arena-playing") && nameInput.value.trim()) {
    join(nameInput.value.trim());
  }
})();
