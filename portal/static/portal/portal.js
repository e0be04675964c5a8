// Small behaviours of the portal; everything works without them, they only make it nicer.
(function () {
  "use strict";
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const input = document.querySelector(button.dataset.copy);
    const status = document.getElementById(button.getAttribute("aria-describedby"));
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      if (status) status.textContent = "Copied to the clipboard.";
    } catch (error) {
      // No clipboard permission (plain http, old browser): the key is selected for Ctrl+C.
      if (status) status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  // A form error comes back as 400 with the fragment to show; htmx leaves 4xx unswapped.
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.xhr.status === 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
})();
