"""The local region's IAM gate: every request the local region serves is authorised against the policies
Terraform deploys (rendered from the same templates, terraform/policies/*.json.tftpl), the way AWS authorises it.

- `stack`: the principals, keys and resource policies of one deployed stack, rendered from the templates with the
  local region's names and ARNs.
- `operations`: what AWS authorises for each request: the map from an API operation (and its parameters) to IAM
  actions, resources and condition context (AWS's Service Authorization Reference).
- `evaluator`: the policy evaluation, by @cloud-copilot/iam-simulate in a Node child process (evaluate.cjs), with
  the policies checked at load for condition operators and keys the gate cannot honour.
- `gate`: the step in front of every request: who is calling (the access key), what is needed, the decision,
  the denial in the service's own error shape, the log line, and the record of what was allowed.
- `usage`: least privilege as a figure: the grants of each policy against what the suite was allowed to do.
"""
