/* SAML HTTP-POST binding: submit the answer to the connector as soon as the page loads. */
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-sim-post]");
  if (form) {
    form.submit();
  }
});
