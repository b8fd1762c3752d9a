// The whole citizen journey in headless Debian Chromium, one language per run (issue 9 item 3):
// apply -> desk code by SMS -> officer logs in with password + TOTP, finds the application,
// records a passing document check, approves by SMS -> the citizen activates with the A-code ->
// at the demo portal: OIDC at basis, step up to midden with the SMS code, single logout; SAML at
// midden with the SMS code, single logout.
//
//   node journey.mjs CONFIG.json OUTPUT.json
//
// CONFIG (written by tests/test_browser_journey.py, which also seeds the register person, the
// officer and the portal's registrations):
//   {"base": GATEWAY_URL, "portal": PORTAL_URL, "lang": "nl" | "en", "chromium": PATH,
//    "artifacts": DIR, "sms_outbox": FILE, "phone": E164, "application": {field: value},
//    "officer": {username, password, secret}, "check": {field: value}}
// OUTPUT: {"steps": [{n, name, url, status, lang, h1, text, level, screenshot}],
//          "sms": {"desk": TEXT, "activation": TEXT}, "console": [browser errors],
//          "failed_requests": [{url, status}], "error": null}
//
// Every step leaves a full-page screenshot NN-name.png in DIR; the Python test asserts on what
// each step showed. The keyboard-only login is audit.mjs's "keyboard" mode, not repeated here.

import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, messagesTo, totp } from "./lib.mjs";

const CODE_CHARS = "BCDFGHJKLMNPQRSTVWXZ23456789"; // gateway.desks.codes.ALPHABET

const [configPath, outputPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const output = { steps: [], sms: {}, console: [], failed_requests: [], error: null };
const locale = config.lang === "nl" ? "nl-NL" : "en-GB";
let current = null; // the page in use, for a screenshot if a step fails

// --- helpers ------------------------------------------------------------------------------


function lastMessage(to) {
  const entries = messagesTo(config.sms_outbox, to);
  if (!entries.length) throw new Error(`no SMS to ${to} in the outbox`);
  return entries[entries.length - 1].text;
}

// A desk code (B...) or an activation code (A...) from the last message to the phone.
function lastCodeStarting(letter) {
  const text = lastMessage(config.phone);
  const match = new RegExp(`\\b(${letter}[${CODE_CHARS}]{8})\\b`).exec(text);
  if (!match) throw new Error(`the last SMS has no ${letter}-code: ${text}`);
  return { code: match[1], text };
}

function lastSmsCode() {
  const match = /#([0-9]{6})$/.exec(lastMessage(config.phone));
  if (!match) throw new Error("the last SMS has no one-time code");
  return match[1];
}

function withLang(url, base = config.base) {
  const u = new URL(url, base);
  u.searchParams.set("lang", config.lang);
  return u.toString();
}

// Record what the person sees now, with a full-page screenshot NN-name.png.
async function step(page, name, status = null) {
  current = page;
  await page.waitForLoadState("load");
  const n = output.steps.length + 1;
  const file = path.join(config.artifacts, `${String(n).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const seen = await page.evaluate(() => ({
    lang: document.documentElement.lang,
    h1: (document.querySelector("h1")?.innerText ?? "").trim(),
    text: (document.querySelector("main") ?? document.body).innerText,
    level: (document.querySelector(".level")?.textContent ?? "").trim(),
  }));
  output.steps.push({ n, name, url: page.url(), status, ...seen, screenshot: file });
}

async function fill(form, fields) {
  for (const [name, value] of Object.entries(fields)) {
    const field = form.locator(`[name="${name}"]`);
    const tag = await field.first().evaluate((el) => `${el.tagName}:${el.type}`);
    if (tag.startsWith("SELECT")) await field.selectOption(value);
    else if (tag.endsWith(":radio")) await form.locator(`[name="${name}"][value="${value}"]`).check();
    else await field.fill(value);
  }
}

// Fill the form whose action contains `action` and click its button, as a person would.
async function submit(page, action, fields = {}, button = null) {
  const forms = page.locator(`form[action*="${action}"]`);
  const form = button ? forms.filter({ has: page.locator(`button[value="${button}"]`) }).first()
                      : forms.first();
  await fill(form, fields);
  const target = button ? form.locator(`button[value="${button}"]`)
                        : form.locator("button[type=submit]").first();
  const [response] = await Promise.all([page.waitForNavigation(), target.click()]);
  return response ? response.status() : null;
}

// A browser context for one person, in the run's language; what the browser refused or
// failed to load goes into the report.
async function newContext(browser) {
  const context = await browser.newContext({ locale });
  context.setDefaultTimeout(15_000);
  // Browser-side refusals (a Content-Security-Policy violation, say) end up in the report.
  context.on("console", (message) => {
    if (message.type() === "error") output.console.push(message.text().slice(0, 500));
  });
  context.on("response", (response) => {
    if (response.status() >= 400) {
      output.failed_requests.push({ url: response.url(), status: response.status() });
    }
  });
  return context;
}

// --- the journey --------------------------------------------------------------------------

async function apply(page) {
  await page.goto(withLang("/apply"));
  await fill(page.locator('form[action*="/apply"]').first(), config.application);
  await step(page, "apply-filled");
  const status = await submit(page, "/apply");
  await step(page, "apply-sent", status);
  const desk = lastCodeStarting("B");
  output.sms.desk = desk.text;
  return desk.code;
}

async function officer(browser, deskCode) {
  const context = await newContext(browser);
  const page = await context.newPage();
  current = page;
  const o = config.officer;
  await page.goto(withLang("/desk/login"));
  await step(page, "desk-login");
  await step(page, "desk-home", await submit(page, "/desk/login", {
    username: o.username, password: o.password, code: totp(o.secret),
  }));
  await page.goto(withLang("/desk/applications"));
  await step(page, "desk-find", await submit(page, "/desk/applications", { desk_code: deskCode }));
  await step(page, "desk-check", await submit(page, "/check", config.check));
  await step(page, "desk-approved", await submit(page, "/approve", { delivery: "sms" }));
  await context.close();
  const activation = lastCodeStarting("A");
  output.sms.activation = activation.text;
  return activation.code;
}

async function activate(page, activationCode) {
  await page.goto(withLang("/activate"));
  const a = config.application;
  await step(page, "activated", await submit(page, "/activate", {
    username: a.username, password: a.password, activation_code: activationCode,
  }));
}

// After a login the gateway may ask about the e-mail address (an interstitial before it returns
// to the portal). The address given when applying was never proven by a code, so it asks to add
// one; the person answers "Ask me later".
async function emailCheck(page) {
  if (!new URL(page.url()).pathname.startsWith("/account/email-check")) return;
  await step(page, "email-check");
  await submit(page, "/account/email-check", {}, "later");
}

const atResult = (url) => url.toString().startsWith(`${config.portal}/result`);

// The second factor at the gateway: choose SMS if asked, have a code sent if none was, type it.
async function smsCode(page, name) {
  if (await page.locator('form[action*="/factor"] button[value="sms"]').count()) {
    await submit(page, "/factor", {}, "sms");
  }
  if (!(await page.locator('form[action*="/code"] button[value="verify"]').count())) {
    await submit(page, "/code", {}, "send");
  }
  await step(page, name);
  await submit(page, "/code", { code: lastSmsCode() }, "verify");
  await emailCheck(page);
  // For SAML the gateway's HTTP-POST page (post.js) posts the Response on to the portal's ACS.
  await page.waitForURL(atResult);
}

// From the portal's home page to the gateway: click the login button for protocol and level.
async function portalLogin(page, protocol, level) {
  await page.goto(withLang("/", config.portal));
  await submit(page, `/login/${protocol}/${level}`);
  if (!page.url().startsWith(config.base)) throw new Error(`not at the gateway: ${page.url()}`);
}

async function password(page, name) {
  const a = config.application;
  await step(page, name);
  await submit(page, "/password", { username: a.username, password: a.password });
  await emailCheck(page);
}

async function portalLogout(page, name) {
  await submit(page, "/logout");
  await page.waitForURL((url) => !url.toString().startsWith(config.base));
  await step(page, name);
}

async function citizen(browser) {
  const context = await newContext(browser);
  const page = await context.newPage();
  current = page;
  const deskCode = await apply(page);
  const activationCode = await officer(browser, deskCode);
  current = page;
  await activate(page, activationCode);

  await page.goto(withLang("/", config.portal));
  await step(page, "portal-home");
  await portalLogin(page, "oidc", "basis");
  await password(page, "oidc-password");
  await page.waitForURL(atResult);
  await step(page, "oidc-basis-result");
  // Step-up: single sign-on keeps the password step; the gateway asks for the SMS code only.
  await portalLogin(page, "oidc", "midden");
  await smsCode(page, "oidc-stepup-code");
  await step(page, "oidc-midden-result");
  await portalLogout(page, "oidc-logged-out");

  await portalLogin(page, "saml", "midden");
  await password(page, "saml-password");
  await smsCode(page, "saml-code");
  await step(page, "saml-midden-result");
  await portalLogout(page, "saml-logged-out");
  await context.close();
}

// --- main ---------------------------------------------------------------------------------

const browser = await chromium.launch({ executablePath: config.chromium, headless: true,
                                        args: CHROMIUM_ARGS });
try {
  fs.mkdirSync(config.artifacts, { recursive: true });
  await citizen(browser);
} catch (error) {
  output.error = String(error && error.stack ? error.stack : error);
  // Where it went wrong, for the person reading the test failure.
  if (current && !current.isClosed()) {
    output.error_url = current.url();
    await current.screenshot({ path: path.join(config.artifacts, "failed.png"), fullPage: true })
      .catch(() => {});
  }
} finally {
  await browser.close();
  fs.writeFileSync(outputPath, JSON.stringify(output, null, 2));
}
