/* Worklist: a whole row opens its study; j/k or arrows move, Enter opens. */
(function () {
  "use strict";
  const rows = Array.from(document.querySelectorAll("#worklist tbody tr[data-uid]"));
  let current = -1;
  function open(row) { window.location.href = "/studies/" + encodeURIComponent(row.dataset.uid); }
  function mark(i) {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach((r, j) => r.classList.toggle("focused", j === current));
    rows[current].scrollIntoView({ block: "nearest" });
  }
  rows.forEach((row, i) => {
    row.addEventListener("click", (e) => { if (e.target.tagName !== "A") open(row); });
    row.addEventListener("mouseenter", () => { current = i; });
  });
  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "j" || e.key === "ArrowDown") { e.preventDefault(); mark(current + 1); }
    else if (e.key === "k" || e.key === "ArrowUp") { e.preventDefault(); mark(current - 1); }
    else if (e.key === "Enter" && current >= 0) { e.preventDefault(); open(rows[current]); }
  });
})();
