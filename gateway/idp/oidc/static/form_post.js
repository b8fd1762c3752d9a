/* OAuth 2.0 Form Post Response Mode: submit the response form as soon as the page loads. */
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-oidc-form-post]");
  if (form) {
    form.submit();
  }
});
