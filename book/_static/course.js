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
    if (ready) ready.then(fitEquations);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(fitEquations, 150);
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

  dropHiddenToggles();
  const ready = () => {
    solutionLinks();
    watchEquations();
    cleanSearchResults();
  };
  // After the toggle buttons and MathJax's start-up have been set up on DOMContentLoaded.
  if (document.readyState === "complete") ready();
  else document.addEventListener("DOMContentLoaded", ready);
})();
