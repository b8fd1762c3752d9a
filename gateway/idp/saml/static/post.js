/* SAML HTTP-POST binding: submit the response form as soon as the page loads. */
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-saml-post]");
  if (form) {
    form.submit();
  }
});
