// asr-inspect: sort the utterance table by a column (click its header; again to reverse) and filter its rows.
// Cells carry their sort key in data-v (numbers) or their text; no library, no network.
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) return cell.textContent.trim().toLowerCase();
    return v === "" ? -Infinity : parseFloat(v);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var desc = th.classList.contains("asc");
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(desc ? "desc" : "asc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var c = x < y ? -1 : x > y ? 1 : 0;
          return desc ? -c : c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var box = document.getElementById("filter"), only = document.getElementById("only-wrong");
  var count = document.getElementById("shown");
  function apply() {
    var q = box.value.trim().toLowerCase(), n = 0;
    document.querySelectorAll("#utts tbody tr").forEach(function (tr) {
      var show = (!q || tr.textContent.toLowerCase().indexOf(q) >= 0) && (!only.checked || tr.classList.contains("wrong"));
      tr.style.display = show ? "" : "none";
      if (show) n += 1;
    });
    count.textContent = n;
  }
  if (box) { box.addEventListener("input", apply); only.addEventListener("change", apply); apply(); }
})();
