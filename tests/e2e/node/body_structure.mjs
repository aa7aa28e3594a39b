// jmap-client-ts 1.0 (npm) creates a draft the way it models Emails: with bodyStructure
// (RFC 8621 §4.6) — here multipart/mixed(related(alternative(text, html), inline image by
// cid), attached PDF) — then submits it. The two blobs are uploaded first (RFC 8620 §6.1; the
// library has no upload helper, so plain fetch against the session's uploadUrl).
// Usage: node body_structure.mjs SESSION_URL LOGIN PASSWORD IDENTITY_ID FROM TO MARKER
// Prints one JSON line: {emailSet, submissionSet}. Trust the CA with NODE_EXTRA_CA_CERTS.
import jmap from "jmap-client-ts";
import transport from "jmap-client-ts/lib/utils/fetch-transport.js";

const [sessionUrl, login, password, identityId, from, to, marker] = process.argv.slice(2);
const auth = "Basic " + Buffer.from(`${login}:${password}`).toString("base64");
const client = new jmap.Client({
  sessionUrl,
  accessToken: "unused",
  transport: new transport.FetchTransport(fetch),
  httpHeaders: { Authorization: auth },
});
await client.fetchSession();
const accountId = client.getFirstAccountId();

async function upload(bytes, type) {
  const url = client.getSession().uploadUrl.replace("{accountId}", accountId);
  const r = await fetch(url, { method: "POST", body: bytes, headers: { Authorization: auth, "Content-Type": type } });
  if (!r.ok) throw new Error(`upload: ${r.status} ${await r.text()}`);
  return (await r.json()).blobId;
}
const png = await upload(Buffer.from("89504e470d0a1a0a", "hex"), "image/png");
const pdf = await upload(Buffer.from("%PDF-1.4\n%%EOF\n"), "application/pdf");

const mailboxes = await client.mailbox_get({ accountId, ids: null });
const drafts = mailboxes.list.find((m) => m.role === "drafts").id;
const emailSet = await client.email_set({
  accountId,
  create: {
    d: {
      mailboxIds: { [drafts]: true },
      keywords: { $draft: true },
      from: [{ email: from }],
      to: [{ email: to }],
      subject: `bodyStructure ${marker}`,
      bodyValues: {
        text: { value: `Plain ${marker}` },
        html: { value: `<html><body><p>Rich ${marker}</p><img src="cid:logo@example"></body></html>` },
      },
      bodyStructure: {
        type: "multipart/mixed",
        subParts: [
          {
            type: "multipart/related",
            subParts: [
              {
                type: "multipart/alternative",
                subParts: [
                  { partId: "text", type: "text/plain" },
                  { partId: "html", type: "text/html" },
                ],
              },
              { blobId: png, type: "image/png", disposition: "inline", cid: "logo@example" },
            ],
          },
          { blobId: pdf, type: "application/pdf", disposition: "attachment", name: "terms.pdf" },
        ],
      },
    },
  },
});
const emailId = emailSet.created?.d?.id;
const submissionSet = emailId
  ? await client.emailSubmission_set({ accountId, create: { s: { emailId, identityId } } })
  : null;
console.log(JSON.stringify({ emailSet, submissionSet }));
