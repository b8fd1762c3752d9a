// Helpers shared by audit.mjs and journey.mjs: Chromium's launch flags on this kind of machine,
// RFC 6238 TOTP as an authenticator app computes it, and reading the dev SMS outbox.

import crypto from "node:crypto";
import fs from "node:fs";

// The flags this machine needs (closed network, running as root); see /work/shared/NOTES.md.
export const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const ch of text.replace(/=+$/, "").toUpperCase()) {
    const value = alphabet.indexOf(ch);
    if (value < 0) throw new Error("bad base32");
    bits += value.toString(2).padStart(5, "0");
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

// RFC 6238 TOTP (SHA-1, 30 s, 6 digits), as the desk staff's authenticator app computes it.
export function totp(secret, at = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = crypto.createHmac("sha1", base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const number = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(number).padStart(6, "0");
}

// The outbox entries (INTERFACE.md format) to one number, oldest first.
export function messagesTo(outbox, to) {
  if (!fs.existsSync(outbox)) return [];
  return fs.readFileSync(outbox, "utf8").split("\n").filter((l) => l.trim())
    .map((l) => JSON.parse(l)).filter((e) => e.to === to);
}
