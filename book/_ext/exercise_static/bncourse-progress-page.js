/* The "Your progress" page: the state of every exercise from this browser's storage (see
 * bncourse-progress.js), counts per chapter, the function exercises the learner marks as
 * passed in the notebook, and export to, import from and reset of the progress file. */
(function () {
  "use strict";

  var FILE_NAME = "bncourse-progress.json";

  function init() {
    var root = document.querySelector(".bncourse-progress-page");
    var api = window.bncourseProgress;
    if (!root || !api) return;
    var store = api.open();
    var message = root.querySelector(".bncourse-progress-message");
    var rows = root.querySelectorAll("tr[data-exercise-id]");
    var known = Array.prototype.map.call(rows, function (r) { return r.dataset.exerciseId; });
    var say = function (text) { message.textContent = text; };

    if (!store) {
      var note = document.createElement("p");
      note.className = "bncourse-storage-note";
      note.setAttribute("role", "note");
      note.textContent = "This browser does not let the site store anything, so no progress " +
        "is kept: every exercise shows as not attempted, and export, import and reset are off.";
      root.insertBefore(note, root.firstChild);
      root.querySelectorAll("button, input").forEach(function (el) { el.disabled = true; });
    }

    function render() {
      var doc = store ? store.all() : { exercises: {} };
      var totals = { correct: 0, "not yet": 0, "not attempted": 0 };
      root.querySelectorAll(".bncourse-progress-chapter").forEach(function (chapter) {
        var counts = { correct: 0, "not yet": 0, "not attempted": 0 }, n = 0;
        chapter.querySelectorAll("tr[data-exercise-id]").forEach(function (row) {
          var entry = doc.exercises[row.dataset.exerciseId];
          var status = entry ? entry.status : "not attempted";
          var cell = row.querySelector(".bncourse-progress-state");
          cell.textContent = status;
          row.dataset.state = status;
          var mark = row.querySelector(".bncourse-progress-mark");
          if (mark) mark.checked = status === "correct";
          counts[status] += 1;
          totals[status] += 1;
          n += 1;
        });
        chapter.querySelector(".bncourse-progress-count").textContent =
          counts.correct + " of " + n + " correct, " + counts["not yet"] + " not yet, " +
          counts["not attempted"] + " not attempted.";
      });
      var all = totals.correct + totals["not yet"] + totals["not attempted"];
      root.querySelector(".bncourse-progress-total").textContent =
        "In all: " + totals.correct + " of " + all + " exercises correct.";
    }

    root.querySelectorAll(".bncourse-progress-mark").forEach(function (box) {
      box.addEventListener("change", function () {
        var id = box.closest("tr").dataset.exerciseId;
        store.put(id, box.checked ? "correct" : "not attempted", null);
        render();
      });
    });

    root.querySelector(".bncourse-progress-export").addEventListener("click", function () {
      var blob = new Blob([JSON.stringify(store.all(), null, 1) + "\n"],
                          { type: "application/json" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = FILE_NAME;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
      say("Saved " + FILE_NAME + ": keep it to import your progress in another browser.");
    });

    root.querySelector(".bncourse-progress-import").addEventListener("change", function (event) {
      var file = event.target.files && event.target.files[0];
      if (!file) return;
      var reader = new FileReader();
      reader.onload = function () {
        var incoming;
        try {
          incoming = api.parse(String(reader.result));
        } catch (error) {
          say("Could not import " + file.name + ": " + error.message + ".");
          return;
        }
        var done = store.merge(incoming, known);
        render();
        say("Imported " + done.added + " exercise" + (done.added === 1 ? "" : "s") +
            " from " + file.name +
            (done.unknown ? "; " + done.unknown + " unknown to this site were left out" : "") +
            ".");
        event.target.value = "";
      };
      reader.readAsText(file);
    });

    root.querySelector(".bncourse-progress-reset").addEventListener("click", function () {
      if (!window.confirm("Forget every answer and verdict kept in this browser?")) return;
      store.reset();
      render();
      say("Progress reset: every exercise is not attempted.");
    });

    render();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
