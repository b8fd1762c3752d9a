// Accessibility audit of the gateway's citizen and desk pages in headless Debian Chromium
// (issue 9 items 3 and 4; WCAG 2.1 A and AA, the legal bar for Dutch government sites).
//
//   node audit.mjs CONFIG.json OUTPUT.json
//
// CONFIG (written by tests/test_browser_a11y.py, which also seeds the accounts it names):
//   {"mode": "pages" | "keyboard", "base": "http://127.0.0.1:PORT", "lang": "nl" | "en",
//    "artifacts": DIR, "chromium": "/usr/bin/chromium", "sms_outbox": FILE, ...seed data}
// OUTPUT: {"pages": [{name, url, status, violations: [...]}], "keyboard": {...}, "error": null}
//
// "pages" walks every page of the citizen and desk flows in one language, each in its normal
// and error state, injects axe-core, runs the WCAG 2.1 A/AA rules and takes a full-page
// screenshot. "keyboard" logs in with the keyboard alone and checks a visible focus indicator
// (WCAG 2.4.7) on every element Tab reaches.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, messagesTo, totp } from "./lib.mjs";

const require = createRequire(import.meta.url);
const AXE_SOURCE = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

const [configPath, outputPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const output = { pages: [], keyboard: null, error: null };
let lastMark = Date.now();

// --- helpers ------------------------------------------------------------------------------


function lastSmsCode(to) {
  const entries = messagesTo(config.sms_outbox, to);
  if (!entries.length) throw new Error(`no SMS to ${to} in the outbox`);
  const match = /#([0-9]{6})$/.exec(entries[entries.length - 1].text);
  if (!match) throw new Error("the last SMS has no code");
  return match[1];
}

function withLang(url) {
  const u = new URL(url, config.base);
  u.searchParams.set("lang", config.lang);
  return u.toString();
}

async function audit(page, name, status) {
  await page.waitForLoadState("load");
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async (tags) => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { runOnly: { type: "tag", values: tags },
                                         resultTypes: ["violations"] });
    return {
      passes: r.passes.length,
      violations: r.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help, tags: v.tags,
        nodes: v.nodes.map((n) => ({ target: n.target, html: n.html.slice(0, 300),
                                     summary: n.failureSummary })),
      })),
    };
  }, WCAG_TAGS);
  const lang = await page.evaluate(() => document.documentElement.lang);
  const file = path.join(config.artifacts, `${config.lang}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  // WCAG 1.4.10 Reflow (axe cannot test it): at 320 CSS pixels wide nothing may need a
  // horizontal scroll bar. A wide data table may scroll inside its own box, not the page.
  const wide = page.viewportSize();
  await page.setViewportSize({ width: 320, height: 640 });
  const overflow = await page.evaluate(() => {
    const limit = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth <= limit) return [];
    return [...document.querySelectorAll("body *")]
      .filter((el) => el.getBoundingClientRect().right > limit + 1
                      && !el.closest(".table-scroll") && el.getClientRects().length)
      .slice(0, 10).map((el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}`
                                + `${el.className ? "." + String(el.className).split(" ").join(".") : ""}`);
  });
  if (overflow.length) {
    await page.screenshot({ path: path.join(config.artifacts, `${config.lang}-${name}-320px.png`),
                            fullPage: true });
  }
  await page.setViewportSize(wide);
  output.pages.push({ name, url: page.url(), status, lang, violations: result.violations,
                      rules_passed: result.passes, overflow_320px: overflow,
                      elapsed_ms: Date.now() - lastMark,
                      screenshot: file, title: await page.title() });
  lastMark = Date.now();
}

async function visit(page, name, url) {
  const response = await page.goto(withLang(url));
  await audit(page, name, response ? response.status() : null);
}

// Submit the form whose action contains `action`, as a person would: click its button.
async function submit(page, action, fields = {}, button = null) {
  const forms = page.locator(`form[action*="${action}"]`);
  const form = button ? forms.filter({ has: page.locator(`button[value="${button}"]`) }).first()
                      : forms.first();
  for (const [name, value] of Object.entries(fields)) {
    const field = form.locator(`[name="${name}"]`);
    const tag = await field.first().evaluate((el) => `${el.tagName}:${el.type}`);
    if (tag.startsWith("SELECT")) await field.selectOption(value);
    else if (tag.endsWith(":radio")) await form.locator(`[name="${name}"][value="${value}"]`).check();
    else await field.fill(value);
  }
  const target = button ? form.locator(`button[value="${button}"]`)
                        : form.locator("button[type=submit]").first();
  const [response] = await Promise.all([page.waitForNavigation(), target.click()]);
  return response ? response.status() : null;
}

async function submitAndAudit(page, name, action, fields = {}, button = null) {
  const status = await submit(page, action, fields, button);
  await audit(page, name, status);
}

// --- the citizen's pages ------------------------------------------------------------------

async function citizen(browser) {
  const context = await browser.newContext({ locale: config.lang === "nl" ? "nl-NL" : "en-GB" });
  const page = await context.newPage();
  const c = config.citizen;

  await visit(page, "home", "/");
  await visit(page, "apply", "/apply");
  await submitAndAudit(page, "apply-errors", "/apply");
  await submitAndAudit(page, "apply-sent", "/apply", c.application);

  await visit(page, "activate", "/activate");
  await submitAndAudit(page, "activate-errors", "/activate");

  // The login of My account: the password page, its errors, the blocked page.
  await visit(page, "login", "/account");
  await submitAndAudit(page, "login-errors", "/password");
  await submitAndAudit(page, "login-blocked", "/password",
                       { username: c.blocked_username, password: c.password });
  await page.goto(withLang("/account"));
  await submitAndAudit(page, "login-suspended", "/password",
                       { username: c.suspended_username, password: c.password });

  // Log in at basis, then step up: the second-factor choice and the code page.
  await page.goto(withLang("/account"));
  await submitAndAudit(page, "account", "/password",
                       { username: c.username, password: c.password });
  await visit(page, "choose-factor", "/account/step-up");
  await submitAndAudit(page, "code", "/factor", {}, "sms");
  await submitAndAudit(page, "code-errors", "/code", { code: "000000" }, "verify");
  await submitAndAudit(page, "code-sent", "/code", {}, "send");
  await submitAndAudit(page, "account-midden", "/code", { code: lastSmsCode(c.phone) }, "verify");

  for (const [name, url] of [
    ["account-history", "/account/history"], ["account-settings", "/account/settings"],
    ["account-password", "/account/password"], ["account-phone", "/account/phone"],
    ["account-email", "/account/email"], ["account-app", "/account/app"],
    ["account-deactivate", "/account/deactivate"], ["account-eid", "/account/eid"],
  ]) await visit(page, name, url);
  await page.goto(withLang("/account/password"));
  await submitAndAudit(page, "account-password-errors", "/account/password");

  await visit(page, "not-found", "/no-such-page");
  await visit(page, "method-not-allowed", "/desk/logout");
  await context.close();
}

// --- the desk's pages ---------------------------------------------------------------------

async function deskLogin(page, staff) {
  await page.goto(withLang("/desk/login"));
  return submit(page, "/desk/login",
                { username: staff.username, password: staff.password, code: totp(staff.secret) });
}

async function desk(browser) {
  const d = config.desk;
  const context = await browser.newContext();
  const page = await context.newPage();
  await visit(page, "desk-login", "/desk/login");
  await submitAndAudit(page, "desk-login-errors", "/desk/login");
  await deskLogin(page, d.officer);
  await audit(page, "desk-home", 200);
  await visit(page, "desk-find", "/desk/applications");
  await submitAndAudit(page, "desk-find-errors", "/desk/applications", { desk_code: "BBBBBBBBB" });
  await submitAndAudit(page, "desk-application", "/desk/applications", { desk_code: d.desk_code });
  await submitAndAudit(page, "desk-check-errors", "/check");
  await submitAndAudit(page, "desk-check-result", "/check", d.check);
  await submitAndAudit(page, "desk-approved", "/approve", { delivery: "sms" });
  await visit(page, "desk-four-eyes", "/desk/four-eyes");
  await visit(page, "desk-four-eyes-new", "/desk/four-eyes/new");
  await submitAndAudit(page, "desk-four-eyes-errors", "/desk/four-eyes/new");
  await visit(page, "desk-suspend", "/desk/suspend");
  await submitAndAudit(page, "desk-suspend-errors", "/desk/suspend");
  await visit(page, "desk-account", "/desk/account");
  await submitAndAudit(page, "desk-account-errors", "/desk/account");
  await submitAndAudit(page, "desk-account-overview", "/desk/account",
                       { username: d.unlink.username, birth_date: d.unlink.birth_date });
  await visit(page, "desk-eidas-unlink", "/desk/eidas-unlink");
  await submitAndAudit(page, "desk-eidas-unlink-errors", "/desk/eidas-unlink");
  await submitAndAudit(page, "desk-eidas-unlink-links", "/desk/eidas-unlink",
                       { username: d.unlink.username, birth_date: d.unlink.birth_date });
  await submitAndAudit(page, "desk-eidas-unlink-links-errors", "/desk/eidas-unlink");
  await submitAndAudit(page, "desk-eidas-unlink-removed", "/desk/eidas-unlink",
                       { link: d.unlink.link, reason: d.unlink.reason });
  await visit(page, "desk-password", "/desk/password");
  await context.close();

  const auditor = await browser.newContext();
  const auditPage = await auditor.newPage();
  await deskLogin(auditPage, d.auditor);
  await visit(auditPage, "desk-audit", "/desk/audit");
  await auditor.close();
}

// --- the eIDAS route (issue 8) -------------------------------------------------------------

// Wait until the browser has landed on a page whose URL starts with `prefix` (the auto-posting
// forms of the SAML HTTP-POST binding move on by themselves, through several navigations).
async function landOn(page, prefix) {
  await page.waitForURL((url) => url.toString().startsWith(prefix), { timeout: 20000 });
  await page.waitForLoadState("load");
}

async function eidas(browser) {
  const e = config.eidas;
  const context = await browser.newContext({ locale: config.lang === "nl" ? "nl-NL" : "en-GB" });
  const page = await context.newPage();

  // Midden: the desk account and the European eID side by side.
  await visit(page, "eidas-choose-midden", "/rp/start?level=midden");
  // Substantieel: only the European eID, with the country to choose.
  await visit(page, "eidas-choose", "/rp/start?level=substantieel");
  const flowUrl = page.url().split("?")[0];
  await submit(page, "/route", { country: "DE" }, "eidas");
  await landOn(page, e.node);
  await audit(page, "sim-choose", 200);
  // Cancel at the node: the node's answer comes back, the gateway explains in its own page.
  await submit(page, "/sso/answer", {}, "cancel");
  await landOn(page, config.base + "/eidas/acs");
  await audit(page, "eidas-cancelled", 200);

  // Sent on, then back at the gateway: the waiting page of an external route.
  await page.goto(withLang("/rp/start?level=substantieel"));
  const waiting = new URL(page.url()).pathname;
  await submit(page, "/route", { country: "ES" }, "eidas");
  await landOn(page, e.node);
  await visit(page, "eidas-external", waiting);
  await submit(page, "/again");
  // Chosen again, and this time a test person logs in at the node.
  await submit(page, "/route", { country: "DE" }, "eidas");
  await landOn(page, e.node);
  await submit(page, "/sso/answer", { person: "de-substantial" }, "login");
  await landOn(page, config.base + "/rp/done");
  const done = JSON.parse(await page.locator("body").innerText());
  if (done.level !== "substantieel") throw new Error(`eIDAS login ended with ${JSON.stringify(done)}`);

  // Linking the eID to a Dutch account: the citizen's pages (the eID session is reused).
  await visit(page, "eidas-link", "/eidas/link");
  await submitAndAudit(page, "eidas-link-request", "/eidas/link/start");
  await submitAndAudit(page, "eidas-link-code", "/eidas/link/code");
  await context.close();

  // The desk's side of linking.
  const deskContext = await browser.newContext();
  const deskPage = await deskContext.newPage();
  await deskLogin(deskPage, config.desk.officer);
  await visit(deskPage, "desk-eidas-link", "/desk/eidas-link");
  await submitAndAudit(deskPage, "desk-eidas-link-errors", "/desk/eidas-link");
  await deskContext.close();
}

// --- keyboard only ------------------------------------------------------------------------

async function keyboard(browser) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(withLang("/account"));
  const loginUrl = page.url();
  // Every element Tab should reach, with its look when not focused.
  const focusable = await page.evaluate(() => {
    const sel = "a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex='-1'])";
    return [...document.querySelectorAll(sel)].map((el, i) => {
      el.dataset.kbIndex = String(i);
      const s = getComputedStyle(el);
      return { index: i, tag: el.tagName.toLowerCase(), name: el.name || el.textContent.trim().slice(0, 40),
               outline: `${s.outlineStyle} ${s.outlineWidth} ${s.outlineColor}`, shadow: s.boxShadow };
    });
  });
  const reached = [];
  for (let i = 0; i < focusable.length + 3; i += 1) {
    await page.keyboard.press("Tab");
    const now = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const s = getComputedStyle(el);
      return { index: el.dataset.kbIndex ?? null,
               outline: `${s.outlineStyle} ${s.outlineWidth} ${s.outlineColor}`,
               shadow: s.boxShadow };
    });
    if (now === null || now.index === null) break;
    const before = focusable[Number(now.index)];
    if (reached.some((r) => r.index === before.index)) break;
    const rect = await page.evaluate(() => {
      const r = document.activeElement.getBoundingClientRect();
      return { width: r.width, height: r.height };
    });
    reached.push({ ...before, focused_outline: now.outline, focused_shadow: now.shadow,
                   visible: rect.width > 0 && rect.height > 0,
                   indicator: now.outline !== before.outline || now.shadow !== before.shadow });
    await page.screenshot({ path: path.join(config.artifacts, `${config.lang}-keyboard-${reached.length}.png`) });
  }
  // Now the login itself: Tab to the username field, type, Tab, type, Enter.
  await page.goto(loginUrl);
  let onUsername = false;
  for (let i = 0; i < focusable.length + 1 && !onUsername; i += 1) {
    await page.keyboard.press("Tab");
    onUsername = await page.evaluate(() => document.activeElement?.name === "username");
  }
  let loggedIn = false;
  let finalUrl = page.url();
  if (onUsername) {
    await page.keyboard.type(config.citizen.username);
    await page.keyboard.press("Tab");
    const onPassword = await page.evaluate(() => document.activeElement?.name === "password");
    if (onPassword) {
      await page.keyboard.type(config.citizen.password);
      await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
      finalUrl = page.url();
      loggedIn = new URL(finalUrl).pathname === "/account"
        && (await page.content()).includes(config.citizen.username);
      await page.screenshot({ path: path.join(config.artifacts, `${config.lang}-keyboard-done.png`), fullPage: true });
    }
  }
  output.keyboard = { focusable, reached, on_username: onUsername, logged_in: loggedIn,
                      final_url: finalUrl };
  await context.close();
}

// --- main ---------------------------------------------------------------------------------

const browser = await chromium.launch({ executablePath: config.chromium, headless: true,
                                        args: CHROMIUM_ARGS });
try {
  fs.mkdirSync(config.artifacts, { recursive: true });
  if (config.mode === "keyboard") {
    await keyboard(browser);
  } else if (config.mode === "eidas") {
    await eidas(browser);
  } else {
    await citizen(browser);
    await desk(browser);
  }
} catch (error) {
  output.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
  fs.writeFileSync(outputPath, JSON.stringify(output, null, 2));
}
