// The policy evaluation of the local region's IAM gate: @cloud-copilot/iam-simulate (AWS's evaluation logic:
// explicit deny wins, identity and resource policies in one account, wildcards, NotAction/NotResource, every
// condition operator; actions and resource types checked against AWS's service authorisation data), driven over
// stdin/stdout, one JSON object per line each way, answered in order of completion and matched by "id".
//
//   {"id": 1, "principal": ARN, "action": "sqs:ReceiveMessage", "resource": ARN, "account": "000...",
//    "context": {...}, "identity": {name: policy}, "resourcePolicy": policy | null}
//   -> {"id": 1, "result": "Allowed" | "ExplicitlyDenied" | "ImplicitlyDenied" | "Error", "message": "..."}
//   {"id": 2, "validate": policy, "kind": "identity" | "resource"} -> {"id": 2, "errors": [...]}
//
// IAM_SIMULATE_DIR: where scripts/bootstrap installed the package (default: <repo>/.cache/iam-simulate).
'use strict';
const path = require('path');
const readline = require('readline');
const { createRequire } = require('module');

// Resolve the packages from their install folder (the packages' own "exports" pick the CommonJS build).
const dir = process.env.IAM_SIMULATE_DIR || path.join(__dirname, '..', '..', '.cache', 'iam-simulate');
const requireThere = createRequire(path.join(dir, 'package.json'));
const { runSimulation } = requireThere('@cloud-copilot/iam-simulate');
const { validateIdentityPolicy, validateResourcePolicy } = requireThere('@cloud-copilot/iam-policy');

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function evaluate(q) {
  const simulation = {
    request: {
      principal: q.principal,
      action: q.action,
      resource: { resource: q.resource, accountId: q.account },
      contextVariables: q.context || {},
    },
    identityPolicies: Object.entries(q.identity || {}).map(([name, policy]) => ({ name, policy })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: q.resourcePolicy || undefined,
  };
  const r = await runSimulation(simulation, {});
  if (r.resultType === 'error') {
    return { id: q.id, result: 'Error', message: JSON.stringify(r.errors) };
  }
  const out = { id: q.id, result: r.overallResult };
  if (r.resultType === 'single' && r.result.ignoredContextKeys && r.result.ignoredContextKeys.length) {
    out.ignoredContextKeys = r.result.ignoredContextKeys;
  }
  if (r.overallResult === 'ExplicitlyDenied' && r.resultType === 'single') {
    const a = r.result.analysis || {};
    const where = [];
    if ((a.identityAnalysis?.denyStatements || []).length) where.push('an identity-based policy');
    if ((a.resourceAnalysis?.denyStatements || []).length) where.push('a resource-based policy');
    out.deniedBy = where;
  }
  return out;
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  let q;
  try {
    q = JSON.parse(line);
  } catch (e) {
    reply({ id: null, result: 'Error', message: `not JSON: ${e}` });
    return;
  }
  if (q.validate) {
    const v = q.kind === 'resource' ? validateResourcePolicy : validateIdentityPolicy;
    reply({ id: q.id, errors: v(q.validate).map((e) => `${e.path}: ${e.message}`) });
    return;
  }
  evaluate(q).then(reply, (e) => reply({ id: q.id, result: 'Error', message: String(e && e.stack ? e.stack : e) }));
});
rl.on('close', () => process.exit(0));
reply({ id: 0, ready: true });
