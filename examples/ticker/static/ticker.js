// tidings market: a live board of 500 symbols, a chart of one, orders and their fills.
// Quotes arrive on the map quotes:board (one key per symbol: the whole board at once, then
// each change), one-second bars on chart:SYMBOL, fills on this trader's personal channel
// fills:#USER (the server subscribes the connection to it).
(function () {
  "use strict";
  const BOARD = "quotes:board";
  const COLUMNS = ["price", "change", "bid", "ask", "volume"];
  const DRAW_MS = 100;      // the table is redrawn 10 times a second, with the latest of each
  const CHART_MS = 250;
  const CHART_BARS = 300;   // five minutes of one-second bars
  const $ = (id) => document.getElementById(id);

  const quotes = new Map();   // symbol -> the quote the table shows
  const pending = new Map();  // symbol -> a newer quote, not drawn yet (the latest wins)
  const rows = new Map();     // symbol -> {tr, cells}
  const orders = new Map();   // order id -> what the order list shows
  const fills = [];           // every fill received, with its offset (tests read them)
  let lastFillOffset = 0;
  let sortKey = "symbol", sortDir = 1, sortedAt = 0, sortDirty = false;
  let chosen = null;
  let received = 0;
  let updates = 0;      // board updates received since the page opened (tests read it)
  let user = "";

  function traderKey() {
    // Per browser: the same key is the same trader (others only ever see a hash of it).
    let key = localStorage.getItem("tidings-market-key");
    if (!/^[0-9a-f]{32}$/.test(key || "")) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem("tidings-market-key", key);
    }
    return key;
  }

  function setStatus(state) {
    $("status").dataset.state = state;
    $("status").textContent = state;
    document.body.dataset.state = state;
  }

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const centrifuge = new Centrifuge(scheme + "://" + location.host + "/connection/websocket", {
    data: { key: traderKey() },
  });
  let disconnects = 0;
  centrifuge.on("connecting", () => setStatus("connecting"));
  centrifuge.on("connected", (ctx) => { user = (ctx.data && ctx.data.user) || ""; setStatus("connected"); });
  centrifuge.on("disconnected", () => setStatus("disconnected"));
  centrifuge.on("state", (ctx) => { if (ctx.oldState === "connected") disconnects += 1; });

  // ------------------------------------------------------------------ the board

  // A map: one key per symbol. `sync` brings the whole board (on subscribe, or after an
  // absence too long to catch up); `update` each change after it. The server conflates:
  // a connection that cannot keep up gets the latest quote of each symbol, never a backlog,
  // and a page that asks for a rate gets at most that many updates per symbol per second.
  const HIDDEN_RATE = 1; // updates per symbol per second while nobody looks at the page
  let board = null;
  let rate = 0;          // 0: every update

  function subscribeBoard(wanted) {
    if (board) centrifuge.removeSubscription(board);
    rate = wanted;
    const sub = centrifuge.newMapSubscription(BOARD, {
      pageSize: 500,
      data: wanted ? { max_frequency: wanted } : undefined,
    });
    sub.on("sync", (ctx) => {
      ctx.entries.forEach((entry) => take(entry.data));
      drawPending();
      document.body.dataset.symbols = String(quotes.size); // how many came at once
    });
    sub.on("update", (ctx) => { updates += 1; if (!ctx.removed) take(ctx.data); });
    sub.on("subscribed", () => { document.body.dataset.subscribed = "true"; });
    sub.on("subscribing", () => { document.body.dataset.subscribed = "false"; });
    document.body.dataset.rate = String(wanted);
    board = sub;
    sub.subscribe();
  }

  // A background tab draws nothing: it asks for one update per symbol per second, and for
  // every update again when it is looked at.
  document.addEventListener("visibilitychange", () => {
    const wanted = document.hidden ? HIDDEN_RATE : 0;
    if (wanted !== rate) subscribeBoard(wanted);
  });

  function take(quote) {
    const known = pending.get(quote.symbol) || quotes.get(quote.symbol);
    if (known && known.time > quote.time) return; // older than what we have
    pending.set(quote.symbol, quote);
    received += 1;
    if (quote.symbol === chosen) chartQuote(quote);
  }

  const tbody = document.querySelector("#board tbody");
  const formats = {
    price: (v) => v.toFixed(2),
    bid: (v) => v.toFixed(2),
    ask: (v) => v.toFixed(2),
    change: (v) => (v > 0 ? "+" : "") + v.toFixed(2),
    volume: (v) => v.toLocaleString("en-US"),
  };

  function addRow(symbol) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = symbol;
    const name = document.createElement("td");
    name.textContent = symbol;
    tr.append(name);
    const cells = {};
    for (const column of COLUMNS) {
      const td = document.createElement("td");
      td.className = "num" + (["bid", "ask", "volume"].includes(column) ? " wide" : "");
      td.dataset.column = column;
      cells[column] = td;
      tr.append(td);
    }
    tr.addEventListener("click", () => choose(symbol));
    visibility.observe(tr);
    const row = { tr, cells };
    rows.set(symbol, row);
    tbody.append(tr);
    sortDirty = true;
    return row;
  }

  // Only rows on screen flash: animating cells nobody sees would keep the page busy.
  const onScreen = new Set();
  const visibility = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) onScreen.add(entry.target.dataset.symbol);
      else onScreen.delete(entry.target.dataset.symbol);
    }
  });

  function flash(cell, up) {
    cell.animate(
      [{ backgroundColor: up ? "rgba(62, 207, 142, 0.4)" : "rgba(242, 95, 92, 0.4)" },
       { backgroundColor: "rgba(0, 0, 0, 0)" }],
      { duration: 700, easing: "ease-out" });
  }

  function drawPending() {
    for (const quote of pending.values()) {
      const row = rows.get(quote.symbol) || addRow(quote.symbol);
      const before = onScreen.has(quote.symbol) && quotes.get(quote.symbol);
      const previous = quotes.get(quote.symbol);
      quotes.set(quote.symbol, quote);
      for (const column of COLUMNS) {
        if (previous && previous[column] === quote[column]) continue;
        const cell = row.cells[column];
        cell.textContent = formats[column](quote[column]);
        if (before) flash(cell, quote[column] > before[column]);
      }
      row.cells.change.className = "num " + (quote.change > 0 ? "up" : quote.change < 0 ? "down" : "");
      if (sortKey !== "symbol") sortDirty = true;
      if (quote.symbol === chosen) showChosen(quote);
    }
    pending.clear();
    if (!chosen && quotes.size) {
      const remembered = localStorage.getItem("tidings-market-symbol");
      choose(quotes.has(remembered) ? remembered : [...quotes.keys()].sort()[0]);
    }
    const now = Date.now();
    if (sortDirty && now - sortedAt > 1000) sortRows(now);
  }
  setInterval(drawPending, DRAW_MS);

  function sortRows(now) {
    const value = (symbol) => (sortKey === "symbol" ? symbol : (quotes.get(symbol) || {})[sortKey] || 0);
    const order = [...rows.keys()].sort((a, b) => {
      const x = value(a), y = value(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    tbody.append(...order.map((symbol) => rows.get(symbol).tr));
    sortedAt = now;
    sortDirty = false;
  }

  document.querySelectorAll("#board th").forEach((th) => {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : (key === "symbol" ? 1 : -1);
      sortKey = key;
      document.querySelectorAll("#board th").forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      sortRows(Date.now());
    });
  });

  setInterval(() => { $("rate").textContent = String(received); received = 0; }, 1000);

  // ------------------------------------------------------------------ the chart

  const charts = window.LightweightCharts;
  let chart = null, candles = null, volumes = null;
  if (charts) {
    const localTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
    chart = charts.createChart($("chart"), {
      autoSize: true,
      layout: { background: { color: "#171e2e" }, textColor: "#8d96a8" },
      grid: { vertLines: { color: "#20283a" }, horzLines: { color: "#20283a" } },
      rightPriceScale: { minimumWidth: 64 },
      timeScale: { timeVisible: true, secondsVisible: true, rightOffset: 2, tickMarkFormatter: localTime },
      localization: { timeFormatter: localTime },
    });
    candles = chart.addSeries(charts.CandlestickSeries, {
      priceFormat: { type: "price", precision: 2, minMove: 0.01 },
      upColor: "#3ecf8e", downColor: "#f25f5c", borderVisible: false,
      wickUpColor: "#3ecf8e", wickDownColor: "#f25f5c",
    });
    volumes = chart.addSeries(charts.HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "", lastValueVisible: false, priceLineVisible: false,
    });
    volumes.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  }
  let bars = new Map();   // second -> bar: closed ones from chart:SYMBOL, the current one from quotes
  let chartSub = null;
  let chartDirty = false;

  function choose(symbol) {
    if (!rows.has(symbol) && quotes.size) return;
    chosen = symbol;
    localStorage.setItem("tidings-market-symbol", symbol);
    document.querySelectorAll("#board tr.chosen").forEach((tr) => tr.classList.remove("chosen"));
    if (rows.has(symbol)) rows.get(symbol).tr.classList.add("chosen");
    $("order-symbol").value = symbol;
    $("chart-symbol").textContent = symbol;
    if (quotes.has(symbol)) showChosen(quotes.get(symbol));
    if (chartSub) centrifuge.removeSubscription(chartSub);
    bars = new Map();
    chartDirty = true;
    document.body.dataset.chart = "";
    const sub = chartSub = centrifuge.newSubscription("chart:" + symbol);
    sub.on("subscribed", async (ctx) => {
      if (!ctx.recovered) { // the last five minutes, then live
        const history = await sub.history({ limit: CHART_BARS, reverse: true });
        if (sub !== chartSub) return;
        history.publications.forEach((pub) => addBar(pub.data));
      }
      chartDirty = true;
      document.body.dataset.chart = symbol;
    });
    sub.on("publication", (ctx) => { addBar(ctx.data); chartDirty = true; });
    sub.subscribe();
  }

  function addBar([time, open, high, low, close, volume]) {
    bars.set(time, { time, open, high, low, close, volume, closed: true });
  }

  function chartQuote(quote) {
    const time = Math.floor(quote.time / 1000);
    const bar = bars.get(time);
    if (bar && bar.closed) return;
    if (!bar) bars.set(time, { time, open: quote.price, high: quote.price, low: quote.price, close: quote.price, volume: 0 });
    else { bar.high = Math.max(bar.high, quote.price); bar.low = Math.min(bar.low, quote.price); bar.close = quote.price; }
    chartDirty = true;
  }

  setInterval(() => {
    if (!chartDirty || !candles) return;
    chartDirty = false;
    const data = [...bars.values()].sort((a, b) => a.time - b.time).slice(-CHART_BARS);
    bars = new Map(data.map((bar) => [bar.time, bar]));
    candles.setData(data.map(({ time, open, high, low, close }) => ({ time, open, high, low, close })));
    volumes.setData(data.map(({ time, volume, open, close }) => ({
      time, value: volume, color: close >= open ? "rgba(62, 207, 142, 0.35)" : "rgba(242, 95, 92, 0.35)",
    })));
  }, CHART_MS);

  function showChosen(quote) {
    $("chart-price").textContent = quote.price.toFixed(2);
    const change = $("chart-change");
    change.textContent = formats.change(quote.change) + " %";
    change.className = "change " + (quote.change > 0 ? "up" : quote.change < 0 ? "down" : "");
  }

  // ------------------------------------------------------------------ orders and fills

  $("order").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("order-error").textContent = "";
    const params = {
      symbol: $("order-symbol").value.trim().toUpperCase(),
      side: document.querySelector("input[name=side]:checked").value,
      quantity: Number($("order-quantity").value),
    };
    const limit = $("order-limit").value;
    if (limit !== "") params.limit = Number(limit);
    try {
      const reply = await centrifuge.rpc("order", params); // validated on the server (Order)
      const order = orders.get(reply.data.id) || { id: reply.data.id, filled: 0, value: 0, status: "accepted" };
      Object.assign(order, params);
      orders.set(order.id, order);
      renderOrder(order);
    } catch (err) {
      $("order-error").textContent = err.message || String(err.code);
    }
  });

  centrifuge.on("publication", (ctx) => {
    if (!ctx.channel.startsWith("fills:")) return;
    if (ctx.offset && ctx.offset <= lastFillOffset) return; // seen already
    if (ctx.offset) lastFillOffset = ctx.offset;
    fills.push({ offset: ctx.offset, fill: ctx.data });
    const fill = ctx.data;
    const order = orders.get(fill.order) || {
      id: fill.order, symbol: fill.symbol, side: fill.side, quantity: fill.filled + fill.remaining, filled: 0, value: 0,
    };
    order.filled = fill.filled;
    order.value = (order.value || 0) + fill.quantity * fill.price;
    order.status = fill.status;
    orders.set(order.id, order);
    renderOrder(order);
  });

  function renderOrder(order) {
    let li = document.querySelector(`#orders li[data-order="${order.id}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.order = order.id;
      $("orders").prepend(li);
    }
    li.dataset.status = order.status;
    const average = order.filled ? " @ " + (order.value / order.filled).toFixed(2) : "";
    const limit = order.limit ? " limit " + order.limit.toFixed(2) : "";
    li.textContent = `${order.side.toUpperCase()} ${order.quantity} ${order.symbol}${limit}: ` +
      `${order.filled} filled${average}`;
    const badge = document.createElement("span");
    badge.className = "status";
    badge.textContent = order.status;
    li.append(badge);
  }

  // What the tests read.
  window.ticker = {
    centrifuge, quotes, pending, orders, fills,
    get board() { return board; },
    get updates() { return updates; },
    get user() { return user; },
    get chosen() { return chosen; },
    get disconnects() { return disconnects; },
    get bars() { return [...bars.values()].filter((bar) => bar.closed).length; },
    choose,
  };

  subscribeBoard(document.hidden ? HIDDEN_RATE : 0);
  centrifuge.connect();
})();
