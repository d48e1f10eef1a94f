/* rs_deeplab training page: reload while the run is alive (status "running", page written recently), then stop. */
(function () {
  "use strict";
  const RS = (window.RS = window.RS || {});
  const run = window.RS_RUN || { status: "finished" };
  const note = document.getElementById("reload");
  const age = Date.now() / 1000 - run.written;
  RS.reloading = false;
  if (run.status === "running") {
    if (age < run.staleAfter) {
      RS.reloading = true;
      if (note) note.textContent = "; this page reloads every " + run.refresh + " s while the run goes on";
      RS.reloadTimer = setTimeout(function () { window.location.reload(); }, run.refresh * 1000);
    } else if (note) {
      note.textContent = "; no update for " + Math.round(age / 60) + " min: the run has probably stopped " +
        "(no more reloads)";
    }
  }
  RS.ready = true;
})();
