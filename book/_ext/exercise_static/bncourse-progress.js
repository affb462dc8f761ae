/* The learner's progress, kept in this browser only (localStorage), never sent anywhere.
 *
 * One key, "bncourse-progress", holds the document that the "Your progress" page exports and
 * imports: {"version": 1, "exercises": {id: {"status", "answer", "updated"}}}, with status
 * "correct", "not yet" or "not attempted", answer the text of the field (null for a function
 * exercise) and updated an ISO 8601 time in UTC. A browser that refuses storage (a private
 * window with storage off, a policy) gets null from open(): the pages then work without saving.
 */
(function () {
  "use strict";

  var KEY = "bncourse-progress";
  var VERSION = 1;
  var STATUSES = ["correct", "not yet", "not attempted"];

  function empty() { return { version: VERSION, exercises: {} }; }

  function storage() {
    try {
      var s = window.localStorage;
      var probe = KEY + "-probe";
      s.setItem(probe, "1");
      s.removeItem(probe);
      return s;
    } catch (e) {
      return null;
    }
  }

  function parse(text) {
    var doc = JSON.parse(text);
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
      throw new Error("the file is not a progress file (a JSON object is expected)");
    }
    if (doc.version !== VERSION) {
      throw new Error("the file's progress format is version " + JSON.stringify(doc.version) +
                      "; this site reads version " + VERSION);
    }
    if (!doc.exercises || typeof doc.exercises !== "object" || Array.isArray(doc.exercises)) {
      throw new Error("the file has no \"exercises\" object");
    }
    var clean = empty();
    Object.keys(doc.exercises).forEach(function (id) {
      var entry = doc.exercises[id];
      if (!entry || STATUSES.indexOf(entry.status) < 0) {
        throw new Error("exercise " + id + " has the status " +
                        JSON.stringify(entry && entry.status) + "; expected one of " +
                        STATUSES.map(function (s) { return JSON.stringify(s); }).join(", "));
      }
      clean.exercises[id] = {
        status: entry.status,
        answer: typeof entry.answer === "string" ? entry.answer : null,
        updated: typeof entry.updated === "string" ? entry.updated : new Date(0).toISOString(),
      };
    });
    return clean;
  }

  function time(entry) {
    var t = Date.parse(entry.updated);
    return isNaN(t) ? 0 : t;
  }

  function open() {
    var s = storage();
    if (!s) return null;
    function read() {
      var text = s.getItem(KEY);
      if (!text) return empty();
      try { return parse(text); } catch (e) { return empty(); }
    }
    function write(doc) { s.setItem(KEY, JSON.stringify(doc)); }
    return {
      all: read,
      get: function (id) { return read().exercises[id] || null; },
      put: function (id, status, answer) {
        var doc = read();
        doc.exercises[id] = { status: status, answer: answer === undefined ? null : answer,
                              updated: new Date().toISOString() };
        write(doc);
      },
      // Merge an imported document: for an exercise in both, the later verdict wins.
      merge: function (incoming, known) {
        var doc = read(), added = 0, unknown = 0;
        Object.keys(incoming.exercises).forEach(function (id) {
          if (known && known.indexOf(id) < 0) { unknown += 1; return; }
          var entry = incoming.exercises[id], mine = doc.exercises[id];
          if (!mine || time(entry) >= time(mine)) { doc.exercises[id] = entry; added += 1; }
        });
        write(doc);
        return { added: added, unknown: unknown };
      },
      reset: function () { s.removeItem(KEY); },
    };
  }

  window.bncourseProgress = { open: open, parse: parse, key: KEY, version: VERSION,
                              statuses: STATUSES };
})();
