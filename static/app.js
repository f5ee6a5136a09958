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

  // A big job's task lines load in pages; a line added before the last page loaded sits at
  // the end and comes again with that page, in its place: keep that one.
  document.addEventListener("htmx:afterSettle", (event) => {
    if (!event.detail.target || !document.getElementById("task-rows")) return;
    const seen = new Set();
    document.querySelectorAll("#task-rows > tr.task-line[id]").forEach((tr) => {
      if (seen.has(tr.id)) tr.remove(); else seen.add(tr.id);
    });
  });

  // The diagram's live poll swaps the status of each task line the page shows; say how many
  // lines that is, so a big job's poll reads those lines and not all of the job's tasks.
  document.addEventListener("htmx:configRequest", (event) => {
    if (event.detail.elt.id !== "job-diagram") return;
    event.detail.parameters.lines = document.querySelectorAll("#task-rows > tr.task-line").length;
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

// --- The header's menu on narrow screens ----------------------------------------------------
(function () {
  "use strict";
  const toggle = () => document.querySelector("[data-menu-toggle]");
  const setOpen = (open) => {
    const button = toggle();
    if (!button) return;
    button.setAttribute("aria-expanded", String(open));
    button.closest(".topbar").classList.toggle("menu-open", open);
  };
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-menu-toggle]");
    if (button) { setOpen(button.getAttribute("aria-expanded") !== "true"); return; }
    // A click outside the bar closes it; a link inside it navigates anyway.
    const open = toggle() && toggle().getAttribute("aria-expanded") === "true";
    if (open && !event.target.closest(".topbar")) setOpen(false);
  });
  document.addEventListener("keydown", (event) => {
    const button = toggle();
    if (event.key === "Escape" && button && button.getAttribute("aria-expanded") === "true") {
      setOpen(false);
      button.focus();
    }
  });
})();

// --- Notifications: the bell's panel, toasts, mark read on open (alerts/views.py) ----------
(function () {
  "use strict";
  const bell = () => document.getElementById("notify");
  const csrf = () => {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || ""; }
    catch (e) { return ""; }
  };

  // Opening an unread notification marks it read. The link stays a real link (new tab, no
  // JavaScript); keepalive lets the POST finish while the browser navigates away.
  const markRead = (event) => {
    const link = event.target.closest("a[data-read-url]");
    if (!link || (event.type === "auxclick" && event.button !== 1)) return;
    fetch(link.dataset.readUrl, {
      method: "POST", keepalive: true, redirect: "manual", credentials: "same-origin",
      headers: { "X-CSRFToken": csrf() },
    }).catch(() => {});
    document.querySelectorAll(`a[data-read-url="${link.dataset.readUrl}"]`).forEach((a) => {
      a.removeAttribute("data-read-url");
      const item = a.closest(".notify-item, tr.unread");
      if (item) item.classList.remove("unread");
    });
  };
  document.addEventListener("click", markRead);
  document.addEventListener("auxclick", markRead);

  // The panel closes on Escape (focus back on the bell) and on a click elsewhere.
  document.addEventListener("keydown", (event) => {
    const b = bell();
    if (event.key === "Escape" && b && b.open) {
      b.open = false;
      b.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", (event) => {
    const b = bell();
    if (b && b.open && !b.contains(event.target)) b.open = false;
  });

  // Toasts: the close button; auto-dismiss after data-dismiss-after seconds, paused while the
  // pointer or focus is on the toast (errors have no timer: they stay until closed).
  const dismiss = (toast) => {
    toast.classList.add("leaving");
    setTimeout(() => toast.remove(), 200);
  };
  const arm = (toast) => {
    const seconds = Number(toast.dataset.dismissAfter);
    if (!seconds || toast.dataset.armed) return;
    toast.dataset.armed = "1";
    let timer = setTimeout(() => dismiss(toast), seconds * 1000);
    const pause = () => clearTimeout(timer);
    const resume = () => {
      clearTimeout(timer);
      if (!toast.matches(":hover, :focus-within")) timer = setTimeout(() => dismiss(toast), seconds * 1000);
    };
    toast.addEventListener("mouseenter", pause);
    toast.addEventListener("focusin", pause);
    toast.addEventListener("mouseleave", resume);
    toast.addEventListener("focusout", resume);
  };
  document.addEventListener("click", (event) => {
    const close = event.target.closest("[data-toast-close]");
    if (close) dismiss(close.closest("[data-toast]"));
  });
  document.addEventListener("htmx:load", (event) => {
    const elt = event.detail.elt;
    if (!elt || !elt.querySelectorAll) return;
    if (elt.matches("[data-toast]")) arm(elt);
    elt.querySelectorAll("[data-toast]").forEach(arm);
  });
})();
