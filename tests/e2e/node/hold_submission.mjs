// jmap-client-ts 1.0 (npm) sends a draft with FUTURERELEASE in the envelope, the way RFC 8621 §7
// carries SMTP parameters: envelope.mailFrom.parameters = {HOLDFOR: "<seconds>"}.
// Usage: node hold_submission.mjs SESSION_URL LOGIN PASSWORD IDENTITY_ID FROM TO HOLDFOR
// Prints one JSON line: the account's submission capability (RFC 8621 §1.3.2), the EmailSubmission/set response
// and the EmailSubmission/get of what was created. Trust the server's CA with NODE_EXTRA_CA_CERTS.
import jmap from "jmap-client-ts";
import transport from "jmap-client-ts/lib/utils/fetch-transport.js";

const [sessionUrl, login, password, identityId, from, to, holdFor] = process.argv.slice(2);
const client = new jmap.Client({
  sessionUrl,
  accessToken: "unused",
  transport: new transport.FetchTransport(fetch),
  // The library sends a Bearer token; Basic auth replaces its Authorization header.
  httpHeaders: { Authorization: "Basic " + Buffer.from(`${login}:${password}`).toString("base64") },
});
await client.fetchSession();
const accountId = client.getFirstAccountId();
const mailboxes = await client.mailbox_get({ accountId, ids: null });
const drafts = mailboxes.list.find((m) => m.role === "drafts").id;
const created = await client.email_set({
  accountId,
  create: {
    d: {
      mailboxIds: { [drafts]: true },
      keywords: { $draft: true },
      from: [{ email: from }],
      to: [{ email: to }],
      subject: "held by jmap-client-ts",
      bodyValues: { b: { value: "see you later" } },
      textBody: [{ partId: "b", type: "text/plain" }],
    },
  },
});
const emailId = created.created.d.id;
const set = await client.emailSubmission_set({
  accountId,
  create: {
    s: {
      emailId,
      identityId,
      envelope: {
        mailFrom: { email: from, parameters: { HOLDFOR: holdFor } },
        rcptTo: [{ email: to, parameters: null }],
      },
    },
  },
});
const id = set.created?.s?.id;
const get = id ? await client.emailSubmission_get({ accountId, ids: [id] }) : null;
console.log(JSON.stringify({
  capability: client.getSession().accounts[accountId].accountCapabilities["urn:ietf:params:jmap:submission"],
  set,
  get,
}));
