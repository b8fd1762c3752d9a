/* Progressive enhancement only: every page works without JavaScript.
   Moves focus to the error summary so screen reader users hear what went wrong first. */
document.addEventListener("DOMContentLoaded", function () {
  var summary = document.querySelector("[data-autofocus]");
  if (summary) {
    summary.focus();
  }
});
