// The dashboard end to end in a real browser (scripts/check-dashboard.sh starts the network and passes its details
// in the environment): the page loads with no script or CSP error, shows the network, commit progress and the
// proposals with their ballots, and its ledger explorer fetches a transaction's COSE receipt with the user's client
// certificate and verifies it in the browser; changed receipts are refused. Screenshots go to OUT_DIR.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/check-dashboard.sh)`);
  return v;
};
const url = env("SYNOD_URL");
const txid = env("TX_ID");
const openProposal = env("OPEN_PROPOSAL");
const outDir = env("OUT_DIR");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // The machine's network is closed: no background connections to Google's hosts.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const problems = [];
try {
  const context = await browser.newContext({
    // The node's certificate chains to the service certificate, not to a public root.
    ignoreHTTPSErrors: true,
    clientCertificates: [{ origin: url, certPath: env("USER_CERT"), keyPath: env("USER_KEY") }],
    viewport: { width: 1400, height: 1000 },
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A member without a ballot is a 404 (CCF's VoteNotFound): the page asks each member of an open proposal.
    const expected = m.location().url.includes("/ballots/") && m.text().includes("404");
    if (m.type() === "error" && !expected) problems.push(`console: ${m.text()} (${m.location().url})`);
  });

  await page.goto(`${url}/node/dashboard`);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 30_000 });
  assert.equal(await page.textContent("#service-status"), "Open");
  assert.equal(await page.textContent("#service-key"), "ECDSA P-384");
  assert.match(await page.textContent("#service-fingerprint"), /^[0-9a-f]{64}$/);
  const nodes = await page.$$eval("#nodes-body tr", (rows) => rows.map((r) => r.innerText));
  assert.equal(nodes.length, 1, `one node: ${nodes}`);
  assert.match(nodes[0], /Trusted/);
  assert.match(nodes[0], /primary/);
  assert.match(await page.textContent("#commit"), /^\d+\.\d+$/);
  // The accepted proposals that opened the service, with their final votes, and the open one with its ballot.
  await page.waitForFunction(
    (id) => [...document.querySelectorAll("#proposals-body tr")].some((r) =>
      r.innerText.includes(id.slice(0, 16)) && r.innerText.includes("submitted")),
    openProposal, { timeout: 10_000 });
  const proposals = await page.$$eval("#proposals-body tr", (rows) => rows.map((r) => r.innerText));
  assert.ok(proposals.some((p) => /Accepted/.test(p) && /for/.test(p)), `an accepted proposal: ${proposals}`);
  assert.ok(proposals.some((p) => /Open/.test(p)), `the open proposal: ${proposals}`);
  await page.screenshot({ path: `${outDir}/dashboard.png`, fullPage: true });

  // The explorer: status, then the receipt fetched and verified in the browser.
  await page.fill("#txid", txid);
  await page.click("#lookup-button");
  await page.waitForSelector("#receipt-verdict", { timeout: 15_000 });
  const verdict = await page.textContent("#receipt-verdict");
  assert.match(verdict, new RegExp(`^Receipt verified against the service certificate: transaction ${txid}`),
    verdict);
  assert.match(await page.textContent("#tx-status"), /Committed/);
  await page.screenshot({ path: `${outDir}/explorer.png`, fullPage: true });

  // The same check refuses a receipt with any of these bytes changed, and one checked against another key.
  const refused = await page.evaluate(async (id) => {
    const r = await fetch(`/app/receipt?transaction_id=${id}`, { headers: { Accept: "application/cose" } });
    const bytes = new Uint8Array(await r.arrayBuffer());
    const cert = (await (await fetch("/node/network")).json()).service_certificate;
    const out = [];
    for (let i = 0; i < bytes.length; i += 7) {
      const changed = bytes.slice();
      changed[i] ^= 0x01;
      try {
        await window.synodVerifyCoseReceipt(changed, cert);
        out.push(`byte ${i} changed and accepted`);
      } catch {
        // refused, as it must be
      }
    }
    return { accepted: out, checked: Math.ceil(bytes.length / 7) };
  }, txid);
  assert.deepEqual(refused.accepted, [], JSON.stringify(refused));
  console.log(`dashboard: ${refused.checked} changed receipts refused in the browser`);

  // Bad input in the explorer gets an answer, not an error.
  await page.fill("#txid", "not a tx");
  await page.click("#lookup-button");
  await page.waitForFunction(() => document.querySelector("#tx-status").textContent.includes("view.seqno"));
} finally {
  await browser.close();
}
assert.deepEqual(problems, [], problems.join("\n"));
console.log(`dashboard: loaded, network, proposals and a receipt verified in Chromium; screenshots in ${outDir}`);
