// The image table of a semtile report: sort, filter and page rows held as JSON in the page, and a larger
// view of one image with its mask and maps as layers. Plain DOM, no library, nothing fetched: the page opens
// offline. Only one page of rows is in the DOM at a time, so 10,000 images open as fast as 100.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var rows = data.rows;
  var columns = data.columns;
  var state = { key: null, dir: 1, page: 0, size: 100, filter: "" };
  var shown = rows.slice();
  var table = document.getElementById("images");
  var tbody = table.querySelector("tbody");
  var info = document.getElementById("page-info");
  var dialog = document.getElementById("viewer");
  var current = -1; // index in `shown` of the image in the viewer

  function text(value) { return value === null || value === undefined ? "" : String(value); }

  function format(row, key) {
    var v = row[key];
    if (v === null || v === undefined || v === "") { return "–"; }
    if (key === "ratio") { return v.toFixed(4); }
    if (key === "size") { return row.hw; }
    if (key === "sec") { return v.toFixed(2); }
    return String(v);
  }

  function compare(a, b, key, kind) {
    var x = a[key], y = b[key];
    var xe = x === null || x === undefined || x === "", ye = y === null || y === undefined || y === "";
    if (xe || ye) { return xe === ye ? 0 : (xe ? 1 : -1) * state.dir; } // empty cells last
    if (kind === "num" && typeof x === "number" && typeof y === "number") { return x - y; }
    return String(x).localeCompare(String(y), undefined, { numeric: true });
  }

  function apply() {
    var needle = state.filter.toLowerCase();
    shown = needle ? rows.filter(function (r) {
      return (r.name + " " + r.file + " " + text(r.label) + " " + text(r.maps)).toLowerCase().indexOf(needle) >= 0;
    }) : rows.slice();
    if (state.key) {
      var column = columns.filter(function (c) { return c.key === state.key; })[0];
      shown.sort(function (a, b) { return compare(a, b, state.key, column.kind) * state.dir; });
    }
    var pages = pageCount();
    if (state.page >= pages) { state.page = pages - 1; }
    if (state.page < 0) { state.page = 0; }
    draw();
  }

  function pageCount() { return state.size ? Math.max(1, Math.ceil(shown.length / state.size)) : 1; }

  function cell(tr, content, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (content instanceof Node) { td.appendChild(content); } else { td.textContent = content; }
    tr.appendChild(td);
    return td;
  }

  function draw() {
    var start = state.size ? state.page * state.size : 0;
    var end = state.size ? Math.min(shown.length, start + state.size) : shown.length;
    var fragment = document.createDocumentFragment();
    for (var i = start; i < end; i++) {
      var row = shown[i];
      var tr = document.createElement("tr");
      tr.dataset.name = row.name;
      if (row.thumb) {
        var img = document.createElement("img");
        img.className = "thumb";
        img.loading = "lazy"; // before src: an image given its src first starts loading at once, seen or not
        img.decoding = "async";
        img.width = 96;
        if (row.vw && row.vh) { img.height = Math.max(1, Math.round(96 * row.vh / row.vw)); }
        img.alt = "mask over " + row.name;
        img.dataset.index = String(i);
        img.src = row.thumb;
        cell(tr, img);
      } else {
        cell(tr, row.error ? "no picture: " + row.error : "–", "bad small");
      }
      columns.forEach(function (c) {
        var td = cell(tr, format(row, c.key), c.kind === "num" ? "num" : "");
        if (c.key === "ratio" && typeof row.ratio === "number") {
          var track = document.createElement("span");
          var bar = document.createElement("span");
          track.className = "ratio-track";
          bar.className = "ratio-bar";
          bar.style.width = (100 * Math.min(1, Math.max(0, row.ratio))).toFixed(1) + "%";
          track.appendChild(bar);
          td.appendChild(track);
        }
        if (c.key === "name") { td.title = row.source; }
      });
      var link = document.createElement("a");
      if (row.view) {
        link.href = row.view;
        link.textContent = "view";
        link.className = "view-link";
        link.dataset.index = String(i);
      }
      cell(tr, link);
      fragment.appendChild(tr);
    }
    tbody.replaceChildren(fragment);
    var total = rows.length === shown.length ? "" : " (filtered from " + rows.length + ")";
    info.textContent = shown.length ? (start + 1) + "–" + end + " of " + shown.length + total : "no image" + total;
    document.getElementById("first").disabled = document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("last").disabled = document.getElementById("next").disabled =
      state.page >= pageCount() - 1;
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      var on = th.dataset.key === state.key;
      th.setAttribute("aria-sort", on ? (state.dir > 0 ? "ascending" : "descending") : "none");
    });
  }

  function sortBy(key) {
    if (state.key === key) { state.dir = -state.dir; } else { state.key = key; state.dir = 1; }
    state.page = 0;
    apply();
  }

  table.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.dataset.key); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th.dataset.key); }
    });
  });
  var typing = null;
  document.getElementById("filter").addEventListener("input", function (e) {
    clearTimeout(typing);
    typing = setTimeout(function () { state.filter = e.target.value.trim(); state.page = 0; apply(); }, 120);
  });
  document.getElementById("page-size").addEventListener("change", function (e) {
    state.size = parseInt(e.target.value, 10) || 0;
    state.page = 0;
    apply();
  });
  function go(page) { state.page = Math.max(0, Math.min(pageCount() - 1, page)); draw(); table.scrollIntoView(); }
  document.getElementById("first").addEventListener("click", function () { go(0); });
  document.getElementById("prev").addEventListener("click", function () { go(state.page - 1); });
  document.getElementById("next").addEventListener("click", function () { go(state.page + 1); });
  document.getElementById("last").addEventListener("click", function () { go(pageCount() - 1); });

  // -- the larger view ---------------------------------------------------------------------------------
  function layerToggle(label, target, checked) {
    var box = document.createElement("label");
    var input = document.createElement("input");
    input.type = "checkbox";
    input.checked = checked;
    input.addEventListener("change", function () { target.style.display = input.checked ? "" : "none"; });
    box.appendChild(input);
    box.appendChild(document.createTextNode(" " + label));
    target.style.display = checked ? "" : "none";
    return box;
  }

  function openView(index, focusMap) {
    var row = shown[index];
    if (!row || !row.view) { return; }
    current = index;
    document.getElementById("viewer-title").textContent = row.name;
    var facts = ["label " + text(row.label)];
    if ("truth" in row) { facts.push("true label " + (row.truth === null ? "–" : row.truth)); }
    if ("expert" in row) { facts.push("expert " + (row.expert === null ? "–" : row.expert)); }
    facts.push("adhesive ratio " + (typeof row.ratio === "number" ? row.ratio.toFixed(4) : "–"));
    if (row.px !== null) { facts.push("pixel " + row.px + " nm"); }
    if (row.hw) { facts.push(row.hw + " px"); }
    if (row.params) { facts.push(row.params); }
    facts.push(row.source);
    document.getElementById("viewer-facts").textContent = facts.join(" · ");
    var stack = document.getElementById("viewer-stack");
    var layers = document.getElementById("viewer-layers");
    stack.replaceChildren();
    layers.replaceChildren();
    var base = document.createElement("img");
    base.src = row.view;
    base.alt = row.name;
    base.width = row.vw;
    base.height = row.vh;
    stack.appendChild(base);
    var mask = document.createElement("img");
    mask.src = row.mask;
    mask.alt = "adhesive mask";
    mask.className = "layer";
    stack.appendChild(mask);
    layers.appendChild(layerToggle("adhesive mask", mask, !focusMap));
    Object.keys(row.layers || {}).forEach(function (name) {
      var layer = document.createElement("img");
      layer.src = row.layers[name];
      layer.alt = name;
      layer.className = "layer";
      stack.appendChild(layer);
      layers.appendChild(layerToggle(name, layer, focusMap === name));
    });
    document.getElementById("viewer-open").href = row.view;
    if (!dialog.open) { dialog.showModal(); }
  }

  function indexOfName(name) {
    for (var i = 0; i < shown.length; i++) { if (shown[i].name === name) { return i; } }
    return -1;
  }

  tbody.addEventListener("click", function (e) {
    var target = e.target.closest("[data-index]");
    if (!target) { return; }
    e.preventDefault();
    openView(parseInt(target.dataset.index, 10));
  });
  document.querySelectorAll(".open-view").forEach(function (a) {
    a.addEventListener("click", function (e) {
      var i = indexOfName(a.dataset.name);
      if (i < 0) { return; } // filtered out of the table: the link opens the picture itself
      e.preventDefault();
      openView(i, a.dataset.map);
    });
  });
  document.getElementById("viewer-close").addEventListener("click", function () { dialog.close(); });
  document.getElementById("viewer-prev").addEventListener("click", function () { openView(Math.max(0, current - 1)); });
  document.getElementById("viewer-next").addEventListener("click", function () {
    openView(Math.min(shown.length - 1, current + 1));
  });
  dialog.addEventListener("keydown", function (e) {
    if (e.key === "ArrowLeft") { openView(Math.max(0, current - 1)); }
    if (e.key === "ArrowRight") { openView(Math.min(shown.length - 1, current + 1)); }
  });
  dialog.addEventListener("click", function (e) { if (e.target === dialog) { dialog.close(); } });

  apply();
  document.body.dataset.ready = "true";
})();
