/* Percent bars on the monitoring page (set from data-width: the page's CSP allows no inline style). */
(function () {
  "use strict";
  document.querySelectorAll("[data-width]").forEach((el) => {
    const v = Math.max(0, Math.min(100, parseFloat(el.dataset.width) || 0));
    el.style.width = v + "%";
  });
})();
