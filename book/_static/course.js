/* The course site's own behaviour, on top of the book theme.
 *
 * Loaded with `defer` from the page head, so it runs after the page is parsed and before the
 * theme's own deferred scripts (which sit at the end of the body).
 */
(() => {
  "use strict";

  /* Navigation drawers. The page carries two copies of each sidebar toggle: the theme's
   * header (hidden by the book layout) and the article header's buttons, which readers see.
   * The theme binds its drawer and collapse handlers to the first copy it finds, the hidden
   * one, so on a phone the visible buttons only showed a tooltip. Removing the hidden copies
   * before the theme's scripts run lets them bind to the buttons on screen. */
  const dropHiddenToggles = () => {
    const visible = document.querySelector(".bd-header-article .primary-toggle");
    if (!visible) return;
    document
      .querySelectorAll("#pst-header .primary-toggle, #pst-header .secondary-toggle")
      .forEach((button) => button.remove());
  };

  /* "Solution to Exercise 1.2": the title links to the exercise; a reader who clicks it
   * wants the solution, so the click opens the solution in place instead. A link to a
   * solution from elsewhere (its id in the address) opens it too. */
  const openSolution = (solution) => {
    if (solution && solution.classList.contains("toggle-hidden")) {
      const button = solution.querySelector(":scope > .admonition-title .toggle-button");
      if (button) button.click();
    }
  };
  const solutionLinks = () => {
    // The theme's title handler only knows clicks on the title itself or on its button, so a
    // click on the link is handed to the button.
    document.querySelectorAll("div.solution > .admonition-title a.reference").forEach((link) => {
      link.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        const button = link.closest(".admonition-title").querySelector(".toggle-button");
        if (button) button.click();
      });
      link.setAttribute("title", "Show or hide the solution");
    });
    const target = decodeURIComponent(location.hash.slice(1));
    if (target) {
      const element = document.getElementById(target);
      if (element) openSolution(element.closest("div.solution"));
    }
  };

  /* Wide display equations. An equation that fits at a slightly smaller size is shrunk (to
   * at most 80 %); one that still does not fit scrolls sideways and shows a shadow on the
   * side that has more, so the reader can see that it goes on. */
  const fitEquations = () => {
    document.querySelectorAll('mjx-container[display="true"]').forEach((box) => {
      box.style.fontSize = "";
      box.classList.remove("course-overflows");
      const need = box.scrollWidth;
      const have = box.clientWidth;
      if (need <= have + 1 || have === 0) return;
      const scale = have / need;
      if (scale >= 0.8) {
        box.style.fontSize = `${Math.floor(scale * 1000) / 10}%`;
      }
      if (box.scrollWidth > box.clientWidth + 1) {
        box.classList.add("course-overflows");
        box.setAttribute("tabindex", "0");
        markScroll(box);
      }
    });
  };
  /* A table wider than the column scrolls sideways (course.css): it becomes a tab stop, so
   * that a keyboard can scroll it, named for a screen reader, with the same shadow cue. */
  const fitTables = () => {
    document.querySelectorAll(".bd-article table").forEach((table) => {
      const wide = table.scrollWidth > table.clientWidth + 1;
      table.classList.toggle("course-overflows", wide);
      if (wide) {
        table.setAttribute("tabindex", "0");
        table.setAttribute("role", "region");
        const caption = table.querySelector("caption");
        table.setAttribute("aria-label",
          `${caption ? caption.textContent.trim() : "Table"} (scrolls sideways)`);
        markScroll(table);
      } else if (table.getAttribute("role") === "region") {
        ["tabindex", "role", "aria-label"].forEach((name) => table.removeAttribute(name));
      }
    });
  };
  const markScroll = (box) => {
    box.classList.toggle("course-more-left", box.scrollLeft > 1);
    box.classList.toggle(
      "course-more-right", box.scrollLeft + box.clientWidth < box.scrollWidth - 1);
  };
  const watchEquations = () => {
    document.addEventListener("scroll", (event) => {
      const box = event.target;
      if (box && box.classList && box.classList.contains("course-overflows")) markScroll(box);
    }, true);
    const ready = window.MathJax && MathJax.startup && MathJax.startup.promise;
    if (ready) ready.then(fitEquations).then(fitTables);
    fitTables();
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => { fitEquations(); fitTables(); }, 150);
    });
  };

  /* Search results quote the page source, where math is TeX (\(\gamma\)). Show it as text. */
  const GREEK = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", zeta: "ζ",
    eta: "η", theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π",
    rho: "ρ", sigma: "σ", tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω",
    Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Sigma: "Σ", Phi: "Φ", Psi: "Ψ",
    Omega: "Ω", partial: "∂", nabla: "∇", cdot: "·", times: "×", infty: "∞", sum: "Σ",
    prod: "Π", approx: "≈", neq: "≠", ne: "≠", leq: "≤", le: "≤", geq: "≥", ge: "≥",
    to: "→", rightarrow: "→", in: "∈", sqrt: "√", ell: "ℓ", top: "ᵀ", mathcal: "",
    mathbf: "", mathrm: "", operatorname: "", text: "", hat: "", bar: "", tilde: "",
    left: "", right: "", frac: "", quad: " ", qquad: " ", dots: "…", ldots: "…",
    cdots: "⋯", mid: "|", lVert: "‖", rVert: "‖", Vert: "‖",
  };
  const texToText = (text) => text
    .replace(/\\[()[\]]|\$\$/g, "")
    .replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)")
    .replace(/\\([A-Za-z]+)/g, (whole, name) => (name in GREEK ? GREEK[name] : name))
    .replace(/\\[,;:! ]/g, " ")
    .replace(/[{}]/g, "")
    .replace(/\^(\S)/g, "$1")
    .replace(/_(\S)/g, "$1");
  const cleanSearchResults = () => {
    // The results box is made by the search script after the page has loaded.
    const onSearchPage = DOCUMENTATION_OPTIONS && DOCUMENTATION_OPTIONS.pagename === "search";
    const results = document.getElementById("search-results")
      || (onSearchPage ? document.querySelector(".bd-article") || document.body : null);
    if (!results) return;
    const clean = () => {
      const walker = document.createTreeWalker(results, NodeFilter.SHOW_TEXT);
      const nodes = [];
      while (walker.nextNode()) nodes.push(walker.currentNode);
      // The search marks the word it found (\gamma -> "\" + <span>gamma</span>): give the
      // backslash back to the marked word, so that the command is read whole.
      nodes.forEach((node) => {
        const next = node.nextSibling;
        if (node.textContent.endsWith("\\") && next && next.nodeType === 1
            && /^[A-Za-z]/.test(next.textContent)) {
          node.textContent = node.textContent.slice(0, -1);
          next.textContent = "\\" + next.textContent;
          nodes.push(next.firstChild);
        }
      });
      nodes.forEach((node) => {
        if (/\\[A-Za-z()[\]]|\$\$/.test(node.textContent)) {
          node.textContent = texToText(node.textContent);
        }
      });
    };
    new MutationObserver(clean).observe(results, { childList: true, subtree: true });
    clean();
  };

  /* Printing (the download menu's ".pdf" entry prints the page) in dark mode would put light
   * text on white paper and dark figures on it: the page switches to the light palette for
   * the print and back afterwards. */
  const printInLight = () => {
    let before = null;
    window.addEventListener("beforeprint", () => {
      before = document.documentElement.dataset.theme || null;
      if (before === "dark") document.documentElement.dataset.theme = "light";
    });
    window.addEventListener("afterprint", () => {
      if (before === "dark") document.documentElement.dataset.theme = "dark";
      before = null;
    });
  };

  /* The phone drawers (the theme's <dialog>s): a name for each, a close button at the top,
   * and a section link of the contents drawer closes it once the page has moved there. */
  const drawers = () => {
    const names = {
      "pst-primary-sidebar-modal": "Book contents",
      "pst-secondary-sidebar-modal": "Contents of this page",
    };
    Object.entries(names).forEach(([id, name]) => {
      const dialog = document.getElementById(id);
      if (!dialog) return;
      dialog.setAttribute("aria-label", name);
      if (!dialog.querySelector(".course-drawer-close")) {
        const close = document.createElement("button");
        close.type = "button";
        close.className = "course-drawer-close";
        close.textContent = "Close";
        close.setAttribute("aria-label", `Close ${name.toLowerCase()}`);
        close.addEventListener("click", () => dialog.close());
        dialog.prepend(close);
      }
      dialog.addEventListener("click", (event) => {
        const link = event.target.closest && event.target.closest("a[href]");
        if (!link || !dialog.open) return;
        const url = new URL(link.href, location.href);
        if (url.pathname !== location.pathname || !url.hash) return;
        // Closing hands the focus back to the toggle (the theme's handler); the page then
        // moves to the section, so that the focus does not pull it back.
        event.preventDefault();
        dialog.addEventListener("close", () => {
          const target = document.getElementById(decodeURIComponent(url.hash.slice(1)));
          if (location.hash !== url.hash) location.hash = url.hash;
          else if (target) target.scrollIntoView();
        }, { once: true });
        dialog.close();
      });
    });
  };

  /* Glossary terms: a term linked to the glossary shows its definition beside it on hover and
   * on keyboard focus (_static/course-glossary.js, written at build time from the glossary
   * page). The box stays while the pointer is over it, and Escape closes it. */
  const glossaryTips = () => {
    const definitions = window.courseGlossary;
    if (!definitions) return;
    const links = [...document.querySelectorAll(".bd-article a.reference.internal")]
      .filter((link) => link.querySelector(".std-term"));
    if (!links.length) return;
    const tip = document.createElement("div");
    tip.id = "course-term-tip";
    tip.className = "course-term-tip";
    tip.setAttribute("role", "tooltip");
    tip.hidden = true;
    document.body.appendChild(tip);
    let current = null;
    let pending = null;
    const hide = () => {
      clearTimeout(pending);
      tip.hidden = true;
      if (current) current.removeAttribute("aria-describedby");
      current = null;
    };
    const show = (link) => {
      const entry = definitions[decodeURIComponent(new URL(link.href).hash.slice(1))];
      if (!entry) return;
      clearTimeout(pending);
      if (current !== link) {
        tip.innerHTML = "";
        const title = document.createElement("strong");
        title.textContent = entry.term;
        const body = document.createElement("div");
        body.innerHTML = entry.html;  // the site's own glossary page, written at build time
        tip.append(title, body);
        if (current) current.removeAttribute("aria-describedby");
        current = link;
        link.setAttribute("aria-describedby", tip.id);
        if (window.MathJax && MathJax.typesetPromise) MathJax.typesetPromise([tip]).catch(() => {});
      }
      tip.hidden = false;
      const box = link.getBoundingClientRect();
      const width = Math.min(tip.offsetWidth, document.documentElement.clientWidth - 16);
      const left = Math.max(8, Math.min(box.left, document.documentElement.clientWidth - width - 8));
      tip.style.left = `${left + window.scrollX}px`;
      tip.style.top = `${box.bottom + window.scrollY + 6}px`;
    };
    const later = () => { clearTimeout(pending); pending = setTimeout(hide, 300); };
    links.forEach((link) => {
      link.addEventListener("mouseenter", () => show(link));
      link.addEventListener("focus", () => show(link));
      link.addEventListener("mouseleave", later);
      link.addEventListener("blur", later);
    });
    tip.addEventListener("mouseenter", () => clearTimeout(pending));
    tip.addEventListener("mouseleave", later);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !tip.hidden) hide();
    });
  };

  dropHiddenToggles();
  printInLight();
  const ready = () => {
    drawers();
    glossaryTips();
    solutionLinks();
    watchEquations();
    cleanSearchResults();
  };
  // After the toggle buttons and MathJax's start-up have been set up on DOMContentLoaded.
  if (document.readyState === "complete") ready();
  else document.addEventListener("DOMContentLoaded", ready);
})();
