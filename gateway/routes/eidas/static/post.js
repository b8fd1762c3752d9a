/* SAML HTTP-POST binding: submit the eIDAS form as soon as the page loads. */
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-eidas-post]");
  if (form) {
    form.submit();
  }
});
