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

  // --- Keyboard on the task grid ---------------------------------------------------------
  // Alt+N adds a task line (D365's "New"; on a Mac Option+N). Desktop Chrome and Edge keep
  // Ctrl+N for a new window, and an accesskey alone does not fire in every browser, so the
  // key is read here, by its position (event.code: Option+N types a dead key on a Mac).
  const addTask = () => document.querySelector("[data-shortcut='new-task']");
  let lineBeforeNew = null;  // where Esc on a new line goes back to
  document.addEventListener("click", (event) => {
    if (!event.target.closest("[data-shortcut='new-task']")) return;
    const active = document.activeElement;
    lineBeforeNew = active && active.closest ? active.closest("#task-rows > tr.task-line") : null;
  }, true);
  // On a Mac, Option+N in a text field starts a tilde (ñ): leave typing alone there.
  const mac = /Mac/.test(navigator.platform);
  const typing = (el) => el.isContentEditable || el.matches("textarea, input:not([type=checkbox], [type=radio], [type=button], [type=submit])");
  document.addEventListener("keydown", (event) => {
    const newTask = event.altKey && !event.ctrlKey && !event.metaKey && event.code === "KeyN";
    if (newTask && addTask() && !(mac && typing(event.target))) {
      event.preventDefault();
      addTask().click();
    }
  });

  // Up and Down move between task lines, Home and End to the first and last, Enter opens the
  // line's editor. One line at a time is in the Tab order (a roving tabindex): Tab leaves the
  // grid instead of walking through every line's buttons.
  const lines = () => [...document.querySelectorAll("#task-rows > tr.task-line")];
  const setCurrent = (tr, current) => {
    tr.tabIndex = current ? 0 : -1;
    tr.querySelectorAll("a[href], button").forEach((el) => { el.tabIndex = current ? 0 : -1; });
  };
  const rove = () => {
    const all = lines();
    const current = all.find((tr) => tr.tabIndex === 0) || all[0];
    all.forEach((tr) => setCurrent(tr, tr === current));
  };
  const focusLine = (tr) => {
    if (!tr) return;
    lines().forEach((other) => setCurrent(other, other === tr));
    tr.focus();
  };
  document.addEventListener("keydown", (event) => {
    const tr = event.target;
    if (!(tr instanceof HTMLTableRowElement) || !tr.matches("#task-rows > tr.task-line")) return;
    const all = lines();
    const at = all.indexOf(tr);
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: all.length - 1 }[event.key];
    if (to !== undefined) {
      event.preventDefault();
      focusLine(all[Math.max(0, Math.min(to, all.length - 1))]);
    } else if (event.key === "Enter") {
      const edit = tr.querySelector("[data-edit-line]");
      if (edit) { event.preventDefault(); edit.click(); }
    }
  });
  // In a line's editor Enter saves from any field, as in D365's grid: from a select too, which
  // browsers leave out of a form's implicit submission.
  document.addEventListener("keydown", (event) => {
    const field = event.target;
    if (event.key !== "Enter" || !(field instanceof HTMLSelectElement)) return;
    const form = field.closest("tr.editing form");
    if (form) { event.preventDefault(); form.requestSubmit(); }
  });
  document.addEventListener("focusin", (event) => {
    if (event.target.matches && event.target.matches("#task-rows > tr.task-line")) focusLine(event.target);
  });

  // A change made elsewhere redraws the job's header and task lines (job-changed), but never
  // under the user's hands: a redraw asked just before they opened a task editor, or began to
  // type in the header, is dropped when it arrives. The next change redraws them again.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const target = event.detail.target;
    const config = event.detail.requestConfig;
    if (!target || !config || config.verb !== "get") return;
    const busy = (target.id === "task-grid" && target.querySelector("form[id$='-form']"))
      || (target.id === "job-header" && target.contains(document.activeElement)
          && document.activeElement.matches("input, select, textarea"));
    if (busy) event.detail.shouldSwap = false;
  });

  // A header or task-lines redraw answered after a newer diagram poll (the job ended
  // meanwhile) would show the older status for good, the polls then answering "no change";
  // and a second job-changed that came while the first redraw was on its way is lost with the
  // element it was queued on. Ask for the stale section again.
  const askedAt = {};  // section id -> the diagram version it was last asked again for
  document.addEventListener("htmx:afterSettle", () => {
    const diagram = document.getElementById("job-diagram");
    if (!diagram) return;
    const polled = new URL(diagram.getAttribute("hx-get"), location.href).searchParams.get("v") || "";
    const state = (v) => v.split(".")[0];
    ["job-header", "task-grid"].forEach((id) => {
      const section = document.getElementById(id);
      if (!section || !section.dataset.version || !polled) return;
      if (state(polled) === state(section.dataset.version) || askedAt[id] === polled) return;
      if (id === "task-grid" && section.querySelector("form[id$='-form']")) return;  // being edited
      askedAt[id] = polled;  // once per diagram version: a newer section does not loop
      htmx.ajax("GET", section.getAttribute("hx-get"), { target: section, swap: "outerHTML" });
    });
  });

  // Focus stays on the line: an editor that opens takes it to its first field; Enter (save)
  // and Esc (cancel) give it back to the line, or, for a new line Esc dropped, to the line
  // before it or Add task.
  let fromEditor = null;
  let saved = false;
  // Only an editor's own answer sets them: a poll or redraw swapped between the save's swap
  // and its settle (HX-Trigger job-changed asks for some at once) must not clear them.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const target = event.detail.target;
    if (!(target && target.matches && target.matches("tr.editing") && target.contains(document.activeElement))) return;
    fromEditor = target.id;
    saved = /class="task-line"/.test(event.detail.serverResponse || "");
  });
  document.addEventListener("htmx:afterSettle", (event) => {
    rove();
    const target = event.detail.target;
    const editor = target && target.isConnected && target.matches && target.matches("tr.editing")
      ? target : document.querySelector("#task-rows > tr.editing:not([data-focused])");
    if (editor && !editor.dataset.focused) {
      editor.dataset.focused = "1";
      const field = editor.querySelector(".invalid input, .invalid select, .invalid textarea, [name=description]");
      if (field) field.focus();
      fromEditor = null;
      return;
    }
    if (!fromEditor) return;
    const id = fromEditor;
    fromEditor = null;
    let line = document.getElementById(id);
    if (id === "task-new") {
      // Saved: the new line sits just before the fresh slot. Dropped: back where Alt+N was.
      const slot = document.getElementById("task-new");
      line = saved && slot ? slot.previousElementSibling : lineBeforeNew;
    }
    if (line && line.isConnected && line.matches("tr.task-line")) focusLine(line);
    else if (addTask()) addTask().focus();
  });
  document.addEventListener("DOMContentLoaded", rove);

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

  // A filter that applies as soon as it is chosen (the job list's column filters).
  document.addEventListener("change", (event) => {
    const field = event.target.closest("[data-autosubmit]");
    if (field && field.form) field.form.requestSubmit();
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

// --- The diagram: zoom and pan (templates/jobs/job_detail.html#job-diagram) ---------------
// The buttons zoom by steps and Fit shows the whole drawing; Ctrl (or Cmd) with the wheel
// zooms around the pointer; dragging the drawing pans it. The live poll replaces the
// drawing every 2 s, so the zoom and the scroll position live here, per job, and are put
// back on each new drawing.
(function () {
  "use strict";
  const views = new Map();  // job id -> {scale, left, top}
  const MIN = 0.2, MAX = 3;
  const svgOf = (wrap) => wrap.querySelector("svg.diagram");
  const apply = (wrap) => {
    const svg = svgOf(wrap);
    const view = views.get(wrap.dataset.diagram);
    if (!svg) return;
    wrap.classList.toggle("zoomed", Boolean(view));
    if (!view) { svg.style.width = ""; return; }
    svg.style.width = `${svg.viewBox.baseVal.width * view.scale}px`;
    svg.style.minWidth = "0";
    wrap.scrollLeft = view.left;
    wrap.scrollTop = view.top;
  };
  const zoom = (wrap, scale, x, y) => {
    // (x, y): the point of the panel, in its own pixels, that stays where it is.
    const svg = svgOf(wrap);
    if (!svg) return;
    const before = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    const after = Math.min(MAX, Math.max(MIN, scale(before)));
    const px = (wrap.scrollLeft + x) / before, py = (wrap.scrollTop + y) / before;
    views.set(wrap.dataset.diagram, { scale: after, left: px * after - x, top: py * after - y });
    apply(wrap);
  };
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-zoom]");
    const wrap = button && button.closest("#job-diagram")?.querySelector(".diagram-wrap[data-diagram]");
    if (!wrap) return;
    const middle = [wrap.clientWidth / 2, wrap.clientHeight / 2];
    if (button.dataset.zoom === "in") zoom(wrap, (s) => s * 1.25, ...middle);
    else if (button.dataset.zoom === "out") zoom(wrap, (s) => s / 1.25, ...middle);
    else {
      const svg = svgOf(wrap);
      views.set(wrap.dataset.diagram, { scale: (wrap.clientWidth - 2) / svg.viewBox.baseVal.width, left: 0, top: 0 });
      apply(wrap);
    }
  });
  document.addEventListener("wheel", (event) => {
    const wrap = event.target.closest && event.target.closest(".diagram-wrap[data-diagram]");
    if (!wrap || !(event.ctrlKey || event.metaKey)) return;
    event.preventDefault();
    const box = wrap.getBoundingClientRect();
    zoom(wrap, (s) => s * Math.exp(-event.deltaY * 0.002), event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  let drag = null;
  document.addEventListener("pointerdown", (event) => {
    const wrap = event.target.closest && event.target.closest(".diagram-wrap.zoomed");
    if (!wrap || event.button !== 0 || event.target.closest("a")) return;
    drag = { wrap, x: event.clientX, y: event.clientY, left: wrap.scrollLeft, top: wrap.scrollTop };
    wrap.classList.add("panning");
  });
  document.addEventListener("pointermove", (event) => {
    if (!drag) return;
    drag.wrap.scrollLeft = drag.left - (event.clientX - drag.x);
    drag.wrap.scrollTop = drag.top - (event.clientY - drag.y);
  });
  const stop = () => { if (drag) { drag.wrap.classList.remove("panning"); drag = null; } };
  document.addEventListener("pointerup", stop);
  document.addEventListener("pointercancel", stop);
  document.addEventListener("scroll", (event) => {
    const wrap = event.target;
    const view = wrap.dataset && views.get(wrap.dataset.diagram);
    if (view) { view.left = wrap.scrollLeft; view.top = wrap.scrollTop; }
  }, true);
  document.addEventListener("htmx:afterSettle", () => {
    document.querySelectorAll(".diagram-wrap[data-diagram]").forEach(apply);
  });
})();
