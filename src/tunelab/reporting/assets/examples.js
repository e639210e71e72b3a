(function () {
  "use strict";
  var table = document.getElementById("examples-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var original = Array.prototype.slice.call(body.rows);
  var rows = original.slice();
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("examples-filter");
  var flag = document.getElementById("examples-flag");
  var count = document.getElementById("examples-count");
  var state = { col: -1, desc: false };
  function value(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.getAttribute("data-v");
    var text = raw === null ? cell.textContent : raw;
    if (numeric) {
      var x = parseFloat(text);
      return isNaN(x) ? null : x;
    }
    return text.toLowerCase();
  }
  function apply() {
    var q = filter.value.trim().toLowerCase();
    var f = flag ? flag.value : "";
    var shown = 0;
    original.forEach(function (row) {
      var flags = " " + (row.getAttribute("data-flags") || "") + " ";
      var ok = (!q || row.textContent.toLowerCase().indexOf(q) !== -1) && (!f || flags.indexOf(" " + f + " ") !== -1);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + original.length + " rows shown";
    table.setAttribute("data-shown", String(shown));
  }
  function sortBy(col, desc) {
    state.col = col;
    state.desc = desc;
    var numeric = col >= 0 && heads[col].getAttribute("data-kind") === "num";
    rows = original.slice();
    if (col >= 0) {
      rows.sort(function (a, b) {
        var x = value(a, col, numeric);
        var y = value(b, col, numeric);
        if (x === y) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        var c = x < y ? -1 : 1;
        return desc ? -c : c;
      });
    }
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (th, i) {
      th.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none");
    });
    table.setAttribute("data-sort", col < 0 ? "" : col + (desc ? ":desc" : ":asc"));
  }
  heads.forEach(function (th, i) {
    var button = th.querySelector("button");
    if (button) {
      button.addEventListener("click", function () {
        sortBy(i, state.col === i ? !state.desc : false);
      });
    }
  });
  filter.addEventListener("input", apply);
  if (flag) { flag.addEventListener("change", apply); }
  var hash = window.location.hash.replace(/^#/, "");
  if (hash) {
    var params = new URLSearchParams(hash);
    if (params.has("q")) { filter.value = params.get("q"); }
    if (flag && params.has("flag")) { flag.value = params.get("flag"); }
    var col = parseInt(params.get("sort") || "", 10);
    if (!isNaN(col) && col >= 0 && col < heads.length) { sortBy(col, params.get("desc") === "1"); }
  }
  apply();
  table.setAttribute("data-ready", "1");
})();
