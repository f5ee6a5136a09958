// batchadmin's only script: the shared dialog and keyboard shortcuts. Everything else is htmx.
(function () {
  "use strict";
  const dialog = () => document.getElementById("dialog");

  // Dialogs are partials swapped into <dialog id="dialog">: open it when content arrives.
  document.addEventListener("htmx:afterSwap", (event) => {
    const d = dialog();
    if (event.detail.target === d && d.innerHTML.trim() && !d.open) {
      d.showModal();
      const first = d.querySelector("[autofocus], input:not([type=hidden]), select, textarea, button");
      if (first) first.focus();
    }
  });
  // Views close it after a successful POST with HX-Trigger: dialog-close.
  document.body.addEventListener("dialog-close", () => { const d = dialog(); if (d.open) d.close(); });
  document.addEventListener("close", (event) => {
    if (event.target === dialog()) dialog().innerHTML = "";
  }, true);

  // Keyboard: Ctrl+N adds a task where a grid offers it (the native dialog handles Esc).
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "n") {
      const add = document.querySelector("[data-shortcut='new-task']");
      if (add) { event.preventDefault(); add.click(); }
    }
  });

  // A radio with inputs of its own on its row (End after [N] runs): entering a value there
  // chooses the radio, as in D365's dialogs. Only input does, so tabbing through changes nothing.
  document.addEventListener("input", (event) => {
    const row = event.target.closest("[data-choice-row]");
    const radio = row && row.querySelector("input[type=radio]");
    if (radio && event.target !== radio) radio.checked = true;
  });

  // "Select all" check-boxes for bulk actions.
  document.addEventListener("change", (event) => {
    const all = event.target.closest("[data-select-all]");
    if (!all) return;
    document.querySelectorAll(all.dataset.selectAll).forEach((box) => { box.checked = all.checked; });
  });

  // Polling re-renders sections that hold <details> (history runs, tracebacks, logs): keep
  // each one open or closed as the user left it. They need an id to be recognised.
  let openState = new Map();
  document.addEventListener("htmx:beforeSwap", (event) => {
    openState = new Map();
    const target = event.detail.target;
    if (!target || !target.querySelectorAll) return;
    const all = [...target.querySelectorAll("details[id]")];
    if (target.matches("details[id]")) all.push(target);
    all.forEach((d) => openState.set(d.id, d.open));
  });
  document.addEventListener("htmx:afterSwap", () => {
    openState.forEach((open, id) => {
      const d = document.getElementById(id);
      if (d && d.tagName === "DETAILS") d.open = open;
    });
    openState = new Map();
  });
})();
