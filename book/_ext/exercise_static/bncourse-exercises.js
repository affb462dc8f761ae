/* The course's exercise checker, in the page: the same verdicts and messages as
 * bncourse.exercises.check for number and choice exercises, with no Python and no network.
 *
 * Each exercise's widget carries its data (exported from bncourse.exercises.EXERCISES at
 * build time, the same document as _static/bncourse-exercises.json) in data-exercise.
 * The rules mirror bncourse/exercises/core.py: NumberExercise._judge, ChoiceExercise._judge,
 * choice_letter, page_answer and MESSAGES.
 */
(function () {
  "use strict";

  var NOT_ATTEMPTED = "not attempted", PASSED = "passed", FAILED = "failed";

  // The p significant digits of |x| rounded half to even, as Python rounds, and the
  // decimal exponent: {digits: "dddddd", exp: e} for d.ddddd * 10^e.
  function significant(x, p) {
    var text = Math.abs(x).toExponential(Math.min(100, p + 25));
    var e = parseInt(text.slice(text.indexOf("e") + 1), 10);
    var all = text.slice(0, text.indexOf("e")).replace(".", "");
    var head = all.slice(0, p), tail = all.slice(p);
    var up = tail.charAt(0) > "5" ||
      (tail.charAt(0) === "5" && (/[1-9]/.test(tail.slice(1)) ||
                                  parseInt(head.charAt(p - 1), 10) % 2 === 1));
    if (up) {
      var digits = head.split(""), i = p - 1;
      while (i >= 0 && digits[i] === "9") { digits[i] = "0"; i -= 1; }
      if (i < 0) { digits.unshift("1"); digits.pop(); e += 1; }
      else digits[i] = String(parseInt(digits[i], 10) + 1);
      head = digits.join("");
    }
    return { digits: head, exp: e };
  }

  function trimZeros(text) {
    return text.indexOf(".") >= 0 ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
  }

  // Python's format(x, ".<p>g") for a finite float.
  function formatG(x, p) {
    var sign = x < 0 || Object.is(x, -0) ? "-" : "";
    if (x === 0) return sign + "0";
    var r = significant(x, p), d = r.digits, e = r.exp;
    if (e >= -4 && e < p) {
      var fixed;
      if (e >= 0) fixed = d.slice(0, e + 1) + "." + d.slice(e + 1);
      else fixed = "0." + new Array(-e).join("0") + d;
      return sign + trimZeros(fixed);
    }
    var digits = String(Math.abs(e));
    if (digits.length < 2) digits = "0" + digits;
    return sign + trimZeros(d.charAt(0) + "." + d.slice(1)) + "e" + (e < 0 ? "-" : "+") + digits;
  }

  // Python's str(float) for the values that reach a message: inf, -inf, nan.
  function pyFloat(x) {
    if (x === Infinity) return "inf";
    if (x === -Infinity) return "-inf";
    if (x !== x) return "nan";
    return String(x);
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (whole, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? values[key] : whole;
    });
  }

  // Python's str.strip() (whitespace) for the texts a field holds.
  function strip(text) {
    return text.replace(/^[\s\u001c-\u001f\u0085]+|[\s\u001c-\u001f\u0085]+$/g, "");
  }

  function quoted(text, max) {
    var t = strip(text);
    return t.length > max ? "'" + t.slice(0, max) + "...'" : "'" + t + "'";
  }

  function matches(x, target, rtol, atol) {
    return Math.abs(x - target) <= Math.max(rtol * Math.max(Math.abs(x), Math.abs(target)), atol);
  }

  function verdict(common, status, message, mistake) {
    return { status: status, title: common.titles[status], message: message,
             mistake: mistake || null, passed: status === PASSED };
  }

  var UNICODE_MINUS = /\u2212/g;

  // What a person wrote in the answer field, read as bncourse.exercises.read_number reads it
  // (tests/data/number_inputs.json holds the vectors both follow): {empty: true},
  // {value: x}, or {key, fields} naming the message that refuses it.
  function readNumber(common, text) {
    var t = strip(text);
    if (!t) return { empty: true };
    t = t.replace(UNICODE_MINUS, "-");
    var number = new RegExp("^" + common.number_text + "$");
    if (number.test(t)) return { value: Number(t) };
    var fraction = common.fraction_text ? new RegExp("^" + common.fraction_text + "$").exec(t) : null;
    if (fraction) {
      var b = Number(fraction[3]);
      if (b === 0) return { key: "zero_denominator", fields: { text: quoted(text, common.quoted_max) } };
      var v = Number(fraction[2]) / b;
      return { value: fraction[1] === "-" ? -v : v };
    }
    if (t.split(",").length === 2 && t.indexOf(".") < 0 && t.indexOf("/") < 0) {
      var point = t.replace(",", ".");
      if (number.test(point)) {
        var after = t.split(",")[1].split(/[eE]/)[0];
        if (/^[0-9]{3}$/.test(after)) {
          return { key: "ambiguous_comma", fields: { text: quoted(text, common.quoted_max),
            thousands: t.replace(",", ""), decimal: point } };
        }
        return { value: Number(point) };
      }
    }
    return { key: "not_a_number", fields: { text: quoted(text, common.quoted_max) } };
  }

  // A wrong number with enough significant digits to differ from the value written alike:
  // six, else the fewest from 7 to 17 (bncourse.exercises.distinct_digits).
  function distinctDigits(x, value) {
    for (var p = 6; p <= 17; p++) {
      var shown = formatG(x, p);
      if (shown !== formatG(value, p)) return shown;
    }
    return formatG(x, 17);
  }

  function checkNumber(common, ex, text) {
    var m = common.messages;
    var read = readNumber(common, text);
    if (read.empty) return verdict(common, NOT_ATTEMPTED, m.number_stub);
    if (read.key) return verdict(common, FAILED, fill(m[read.key], read.fields));
    var x = read.value;
    if (!isFinite(x)) return verdict(common, FAILED, fill(m.not_finite, { x: pyFloat(x) }));
    if (matches(x, ex.value, ex.rtol, ex.atol)) return verdict(common, PASSED, m.passed);
    if (ex.value === 0 && Math.abs(x) <= ex.roundoff) {
      return verdict(common, PASSED, fill(m.roundoff, { x3: formatG(x, 3) }));
    }
    for (var i = 0; i < ex.mistakes.length; i++) {
      var k = ex.mistakes[i];
      var rtol = k.rtol === null || k.rtol === undefined ? ex.rtol : k.rtol;
      var atol = k.atol === null || k.atol === undefined ? ex.atol : k.atol;
      if (matches(x, k.answer, rtol, atol)) return verdict(common, FAILED, k.message, k.name);
    }
    var shown = distinctDigits(x, ex.value);
    return verdict(common, FAILED, fill(m.wrong_number,
      { x: shown, x6: shown, nudge: ex.nudge }));
  }

  function choiceLetter(common, text) {
    var t = strip(text).toLowerCase();
    var match = new RegExp(common.choice_text).exec(t);
    return match ? match[1] : t;
  }

  function checkChoice(common, ex, text) {
    var m = common.messages;
    if (!strip(text)) return verdict(common, NOT_ATTEMPTED, m.choice_stub);
    var letter = choiceLetter(common, text);
    if (!Object.prototype.hasOwnProperty.call(ex.options, letter)) {
      var valid = Object.keys(ex.options).sort().map(function (k) { return "'" + k + "'"; });
      return verdict(common, FAILED, fill(m.not_an_option,
        { text: quoted(text, common.quoted_max), valid: valid.join(", ") }));
    }
    if (letter === ex.answer) return verdict(common, PASSED, m.passed);
    for (var i = 0; i < ex.mistakes.length; i++) {
      if (ex.mistakes[i].answer === letter) {
        return verdict(common, FAILED, ex.mistakes[i].message, ex.mistakes[i].name);
      }
    }
    return verdict(common, FAILED, fill(m.wrong_option, { letter: letter, nudge: ex.nudge }));
  }

  var registry = {};

  function check(id, text) {
    var entry = registry[id];
    if (!entry) throw new Error("no exercise " + id + " on this page");
    var fn = entry.exercise.kind === "number" ? checkNumber : checkChoice;
    return fn(entry.common, entry.exercise, String(text));
  }

  // The messages are the Python checker's, written for a notebook; on the page the next hint
  // comes from the Hint button, not from a call to hint(...).
  function pageText(message) {
    return message
      .replace(/More hints: hint\("[^"]*", *\d+\)\./g, "More hints: the Hint button.")
      .replace(/hint\("[^"]*"(?:, *\d+)?\)/g, "the Hint button");
  }

  var MARKS = { passed: "\u2714", failed: "\u2718", "not attempted": "\u2026" };

  function show(widget, result) {
    var box = widget.querySelector(".bncourse-result");
    box.className = "bncourse-result bncourse-check bncourse-" + result.status.replace(" ", "-");
    box.textContent = "";
    var title = document.createElement("strong");
    var mark = document.createElement("span");
    mark.className = "bncourse-mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = MARKS[result.status] + " ";
    title.appendChild(mark);
    title.appendChild(document.createTextNode(result.title + "."));
    box.appendChild(title);
    box.appendChild(document.createTextNode(" " + pageText(result.message)));
  }

  function answerOf(widget) {
    var field = widget.querySelector("input.bncourse-answer");
    if (field) return field.value;
    var chosen = widget.querySelector("input[type=radio]:checked");
    return chosen ? chosen.value : "";
  }

  function putAnswer(widget, text) {
    var field = widget.querySelector("input.bncourse-answer");
    if (field) { field.value = text; return; }
    var radios = widget.querySelectorAll("input[type=radio]");
    for (var i = 0; i < radios.length; i++) radios[i].checked = radios[i].value === text;
  }

  var WORDS = { passed: "correct", failed: "not yet", "not attempted": "not attempted" };
  var STATUSES = { correct: PASSED, "not yet": FAILED, "not attempted": NOT_ATTEMPTED };

  function storageNote(widget) {
    if (document.querySelector(".bncourse-storage-note")) return;
    var note = document.createElement("p");
    note.className = "bncourse-storage-note";
    note.setAttribute("role", "note");
    note.textContent = "This browser does not let the page store anything, so your answers " +
      "are checked but not kept after you leave the page.";
    widget.parentNode.insertBefore(note, widget);
  }

  function setUp(widget, store) {
    var data = JSON.parse(widget.getAttribute("data-exercise"));
    var id = data.exercise.id;
    register(data.common, data.exercise);
    var form = widget.querySelector("form");
    var saved = store ? store.get(id) : null;
    if (saved && typeof saved.answer === "string") {
      putAnswer(widget, saved.answer);
      if (strip(saved.answer)) show(widget, check(id, saved.answer));
    } else if (saved && STATUSES[saved.status] && saved.status !== "not attempted") {
      var status = STATUSES[saved.status];
      show(widget, verdict(data.common, status,
        "(from your saved progress: the answer itself was not saved with it)"));
    }
    if (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var text = answerOf(widget);
        var result = check(id, text);
        show(widget, result);
        if (store) store.put(id, WORDS[result.status], text);
        else storageNote(widget);
      });
    }
    var hintButton = widget.querySelector(".bncourse-hint-button");
    var hintList = widget.querySelector(".bncourse-hints");
    if (hintButton && hintList) {
      var hints = data.exercise.hints, given = 0;
      hintButton.addEventListener("click", function () {
        if (given >= hints.length) return;
        var item = document.createElement("li");
        item.textContent = pageText(hints[given]);
        item.tabIndex = -1;
        given += 1;
        hintList.appendChild(item);
        hintList.hidden = false;
        if (given >= hints.length) {
          hintButton.textContent = "No more hints";
          hintButton.disabled = true;
          // The button can no longer hold the focus: it goes to the hint just shown.
          item.focus();
        } else {
          hintButton.textContent = "Next hint (" + (given + 1) + " of " + hints.length + ")";
        }
      });
    }
    widget.classList.add("bncourse-ready");
  }

  function init() {
    var progress = window.bncourseProgress;
    var store = progress ? progress.open() : null;
    var widgets = document.querySelectorAll(".bncourse-widget[data-exercise]");
    for (var i = 0; i < widgets.length; i++) setUp(widgets[i], store);
    if (!store && widgets.length) storageNote(widgets[0]);
  }

  function register(common, exercise) {
    registry[exercise.id] = { common: common, exercise: exercise };
  }

  window.bncourseExercises = { check: check, formatG: formatG, register: register,
                               readNumber: readNumber, distinctDigits: distinctDigits,
                               pageText: pageText, statuses: STATUSES,
                               ids: function () { return Object.keys(registry); } };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
